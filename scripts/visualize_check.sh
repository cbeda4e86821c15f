#!/usr/bin/env bash
# Do the visualizations reach high activations? For the 8 kept channels of chelsea.png at
# EfficientNet-Lite0 `layer3`, each channel's visualization (the PNG as written, read back
# through the image loader) against the channel's largest activation over the bundled and
# CC0 images (assets/, assets/cc0/), both measured by `extremal exemplars`.
#
#     cargo build --release -p extremal-cli
#     bash scripts/visualize_check.sh [ITERATIONS]      (default 512; about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
X=target/release/extremal
N=${1:-512}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
$X channels assets/chelsea.png --layer layer3 --keep 8 --out "$T/ch" > /dev/null
$X visualize --layer layer3 --mask "$T/ch/channels.json" --iterations "$N" --out "$T/vis" > /dev/null
$X exemplars --layer layer3 --images assets/chelsea.png assets/coffee.png assets/cc0 --mask "$T/ch/channels.json" --top 1 --out "$T/photos" > /dev/null
$X exemplars --layer layer3 --images "$T/vis" --mask "$T/ch/channels.json" --top 1 --out "$T/seen" > /dev/null
python3 - "$T" "$N" <<'PY'
import json, sys
t, n = sys.argv[1], sys.argv[2]
photos = json.load(open(f"{t}/photos/exemplars.json"))
seen = {r["image"]: r["peaks"] for r in map(json.loads, open(f"{t}/seen/results.jsonl"))}
print(f"Lite0 layer3, the 8 kept channels of chelsea.png, {n} iterations; images: "
      f"{photos['images']} photographs (assets/, assets/cc0/)")
print("channel  best photograph        its peak  visualization peak  ratio")
ratios = []
for ch in photos["channels"]:
    k, best = ch["channel"], ch["exemplars"][0]
    peak = seen[f"visualization-{k}.png"][k][0]
    ratios.append(peak / best["value"])
    print(f"{k:7d}  {best['image']:<20s} {best['value']:9.3f}  {peak:18.3f}  {ratios[-1]:5.2f}")
print(f"smallest ratio {min(ratios):.2f} (goal: at least 2)")
PY
