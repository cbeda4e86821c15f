#!/usr/bin/env bash
# The first run without Python (issue 19): python3 and pip hidden from PATH, empty caches;
# the README's two commands — install, then `extremal classify assets/chelsea.png` — must
# work, and with --tests so must `cargo test --workspace`.
#
#     bash scripts/no_python.sh [--tests]
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
# A PATH of links to every command but python*/pip*.
IFS=: read -r -a dirs <<< "$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    n=$(basename "$f")
    case "$n" in python*|pip*) continue ;; esac
    [ -x "$f" ] && [ ! -e "$tmp/bin/$n" ] && ln -s "$f" "$tmp/bin/$n"
  done
done
export PATH="$tmp/bin"
export EXTREMAL_CACHE="$tmp/cache" HF_HOME="$tmp/hf"
if command -v python3 >/dev/null || command -v python >/dev/null; then
  echo "python is still on PATH" >&2
  exit 1
fi
echo "PATH without python: $(command -v python3 || echo 'python3: not found'); caches empty"

cargo install --locked --quiet --path crates/cli --root "$tmp/install"
"$tmp/install/bin/extremal" classify assets/chelsea.png
ls -l "$EXTREMAL_CACHE"/efficientnet-lite0/
if [ "${1:-}" = "--tests" ]; then
  cargo test --workspace --quiet 2>&1 | grep -E "^test result|FAILED|panicked" | sort | uniq -c
fi
