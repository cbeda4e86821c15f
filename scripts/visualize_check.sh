#!/usr/bin/env bash
# Do the visualizations reach high activations? For the 8 kept channels of chelsea.png at
# EfficientNet-Lite0 `layer3`, each channel's visualization (the PNG as written, read back
# through the image loader), with the channel objective (mean over positions, Lucid's
# `channel`) and with the neuron objective (the centre position, Lucid's `neuron`), against
# the channel's largest activation over the bundled and CC0 images (assets/, assets/cc0/);
# every activation is measured by `extremal exemplars` (each image's peak over positions).
#
#     cargo build --release -p extremal-cli
#     bash scripts/visualize_check.sh [ITERATIONS]      (default 512; about 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
X=target/release/extremal
N=${1:-512}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
$X channels assets/chelsea.png --layer layer3 --keep 8 --out "$T/ch" > /dev/null
for objective in channel neuron; do
  $X visualize --layer layer3 --mask "$T/ch/channels.json" --objective $objective --iterations "$N" --out "$T/vis-$objective" > /dev/null
  $X exemplars --layer layer3 --images "$T/vis-$objective" --mask "$T/ch/channels.json" --top 1 --out "$T/seen-$objective" > /dev/null
done
$X exemplars --layer layer3 --images assets/chelsea.png assets/coffee.png assets/cc0 --mask "$T/ch/channels.json" --top 1 --out "$T/photos" > /dev/null
python3 - "$T" "$N" <<'PY'
import json, sys
t, n = sys.argv[1], sys.argv[2]
photos = json.load(open(f"{t}/photos/exemplars.json"))
def seen(objective):
    return {r["image"]: r["peaks"] for r in map(json.loads, open(f"{t}/seen-{objective}/results.jsonl")) if "image" in r}
channel, neuron = seen("channel"), seen("neuron")
print(f"Lite0 layer3, the 8 kept channels of chelsea.png, {n} iterations; {photos['images']} photographs "
      "(assets/, assets/cc0/); peak = largest activation over positions of the PNG read back")
print("channel  best photograph   its peak  channel objective: peak  ratio  neuron objective: peak  ratio")
rc, rn = [], []
for ch in photos["channels"]:
    k, best = ch["channel"], ch["exemplars"][0]
    pc, pn = channel[f"visualization-{k}.png"][k][0], neuron[f"visualization-neuron-{k}.png"][k][0]
    rc.append(pc / best["value"]); rn.append(pn / best["value"])
    print(f"{k:7d}  {best['image']:<15s} {best['value']:9.3f}  {pc:23.3f}  {rc[-1]:5.2f}  {pn:22.3f}  {rn[-1]:5.2f}")
print(f"smallest ratio: channel objective {min(rc):.2f}, neuron objective {min(rn):.2f} (goal: at least 2)")
PY
