#!/usr/bin/env bash
# Regenerates every picture in docs/images (the README's and the tutorials'), with the
# release build, EfficientNet-Lite0's real weights and the bundled images. About 25 minutes on
# a 2-core machine (the 800-iteration perturbations, RISE's 8000 masks, 8 inversions of 400
# steps).
#
#     bash scripts/pictures.sh
#     bash scripts/pictures.sh --overlays   # only the pictures drawn over photographs (~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p extremal-cli
cargo build --release --examples
E=target/release/extremal
W=target/pictures
IMG=docs/images
mkdir -p "$W" "$IMG"

# README and tutorial 7: every method side by side.
$E compare assets/chelsea.png --out "$W/compare"
cp "$W/compare/methods.png" "$IMG/methods.png"

# Tutorial 1: Grad-CAM, and what the network sees through the 10 % extremal mask.
$E attribute assets/chelsea.png --method grad-cam --out "$W/grad-cam"
cp "$W/grad-cam/overlay.png" "$IMG/quick-start-grad-cam.png"
$E attribute assets/chelsea.png --areas 0.05,0.1,0.2 --out "$W/perturbation"
cp "$W/perturbation/masked-0.1.png" "$IMG/quick-start-extremal.png"

# Tutorial 5: the image through the 5 %, 10 % and 20 % masks.
[ "${1:-}" = "--overlays" ] || cargo run --release --example perturbation -- --out "$IMG"

# Tutorials 3 and 4: the kept channels' saliency map and their inversions.
$E channels assets/chelsea.png --layer layer3 --keep 10 --out "$W/channels"
cp "$W/channels/saliency.png" "$IMG/channels-saliency.png"
cp "$W/channels/channels-sheet.png" "$IMG/channels-sheet.png"
if [ "${1:-}" != "--overlays" ]; then
    $E channels assets/chelsea.png --layer layer3 --keep 10 --render --out "$W/render"
    cp "$W/render/render.png" "$IMG/render-layer3.png"
fi

# The quick start's folder run: a signed map (integrated gradients) over each view.
$E attribute tests/fixtures/views --method integrated-gradients --out "$W/folder"
cp "$W/folder/cup/whole.jpg/overlay.png" "$IMG/quick-start-folder-cup.png"

# Tutorial 4 and the reference: the four stages inverted.
[ "${1:-}" = "--overlays" ] || cargo run --release --example invert_stages -- --out "$IMG"

ls -l "$IMG"
