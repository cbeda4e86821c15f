#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), seeded with the repository's
# fixtures, under a 4 GB memory limit, and prints per target: runs, crashes (panics, aborts,
# out-of-memory), and peak memory. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable
# toolchain it runs with RUSTC_BOOTSTRAP=1. Run from the repository root:
#
#     scripts/fuzz.sh [SECONDS] [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(onnx_load weights_load image_load input_load voc_load coco_load)
export RUSTC_BOOTSTRAP=1
seed() {  # target → seed files
  case "$1" in
    onnx_load) ls ../tests/fixtures/onnx/*.onnx ;;
    weights_load) ls ../tests/fixtures/tiny_*.pth ../tests/fixtures/crafted/*.pth ;;
    image_load) ls ../tests/fixtures/voc-mini/JPEGImages/*.jpg ../tests/fixtures/crafted/tall.png ;;
    input_load) ls ../tests/fixtures/onnx/residual.safetensors ;;
    voc_load) ls ../tests/fixtures/voc-mini/Annotations/*.xml ;;
    coco_load) ls ../tests/fixtures/coco-mini/annotations/*.json ;;
  esac
}
cargo fuzz build "${targets[@]/#/}" >/dev/null 2>&1 || cargo fuzz build || exit 1
printf '%-14s %10s %8s %14s\n' target runs crashes peak_rss_mb
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  for f in $(seed "$t"); do cp -n "$f" "corpus/$t/" 2>/dev/null; done
  log="artifacts/$t/run.log"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -malloc_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  code=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(ls "artifacts/$t" | grep -c -E '^(crash|oom|leak|timeout)-')
  [ "$code" -ne 0 ] && status=1
  printf '%-14s %10s %8s %14s\n' "$t" "${runs:-?}" "$crashes" "${rss:-?}"
done
exit $status
