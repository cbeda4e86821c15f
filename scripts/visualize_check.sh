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
#     OBJECTIVES=channel bash scripts/visualize_check.sh 2048    (one objective only)
set -euo pipefail
cd "$(dirname "$0")/.."
X=target/release/extremal
N=${1:-512}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
$X channels assets/chelsea.png --layer layer3 --keep 8 --out "$T/ch" > /dev/null
OBJECTIVES=${OBJECTIVES:-channel neuron}
for objective in $OBJECTIVES; do
  $X visualize --layer layer3 --mask "$T/ch/channels.json" --objective $objective --iterations "$N" --out "$T/vis-$objective" > /dev/null
  $X exemplars --layer layer3 --images "$T/vis-$objective" --mask "$T/ch/channels.json" --top 1 --out "$T/seen-$objective" > /dev/null
done
$X exemplars --layer layer3 --images assets/chelsea.png assets/coffee.png assets/cc0 --mask "$T/ch/channels.json" --top 1 --out "$T/photos" > /dev/null
python3 - "$T" "$N" "$OBJECTIVES" <<'PY'
import json, os, sys
t, n, objectives = sys.argv[1], sys.argv[2], sys.argv[3].split()
photos = json.load(open(f"{t}/photos/exemplars.json"))
def seen(objective):
    if objective not in objectives:
        return None
    return {r["image"]: r["peaks"] for r in map(json.loads, open(f"{t}/seen-{objective}/results.jsonl")) if "image" in r}
views = {o: seen(o) for o in ("channel", "neuron")}
print(f"Lite0 layer3, the 8 kept channels of chelsea.png, {n} iterations; {photos['images']} photographs "
      "(assets/, assets/cc0/); peak = largest activation over positions of the PNG read back")
print("channel  best photograph   its peak  channel objective: peak  ratio  neuron objective: peak  ratio")
ratios = {"channel": [], "neuron": []}
for ch in photos["channels"]:
    k, best = ch["channel"], ch["exemplars"][0]
    cells = []
    for o, name in (("channel", f"visualization-{k}.png"), ("neuron", f"visualization-neuron-{k}.png")):
        if views[o] is None:
            cells.append(f"{'-':>23s}  {'-':>5s}" if o == "channel" else f"{'-':>22s}  {'-':>5s}")
            continue
        p = views[o][name][k][0]
        ratios[o].append(p / best["value"])
        width = 23 if o == "channel" else 22
        cells.append(f"{p:{width}.3f}  {ratios[o][-1]:5.2f}")
    print(f"{k:7d}  {best['image']:<15s} {best['value']:9.3f}  {cells[0]}  {cells[1]}")
print("smallest ratio: " + ", ".join(f"{o} objective {min(r):.2f}" for o, r in ratios.items() if r) + " (goal: at least 2)")
PY
