#!/usr/bin/env python3
"""Feature visualization: extremal's against Lucent's recipe in PyTorch (development time only).

    python3 scripts/visualize_reference.py fixture
        Writes tests/fixtures/lucid_image.safetensors: Lucent's own `param.image` (Fourier and
        pixel, decorrelated, sigmoid) evaluated on fixed parameters, and its colour matrix, for
        crates/invert/tests/lucid.rs.

    cargo build --release -p extremal-cli
    python3 scripts/visualize_reference.py speed [--steps 512] [--channels 3,7,...]
        Lite0 `layer3` (_blocks.10), a batch of 8 channels, Lucent's recipe (its param.image(224,
        batch=8), its standard_transforms, the model's normalisation, Adam 0.05, the sum of each
        image's channel mean) for --steps steps, timed (optimisation loop only), then
        `extremal visualize` with the same steps and batch, side by side; prints both times,
        the ratio, and each side's final channel means.

    python3 scripts/visualize_reference.py exemplars [--copies 8] [--batch 16]
        Images per second of `extremal exemplars` at Lite0 `layer3` (the whole pass over
        copies of the bundled images) against a PyTorch forward to the same site, same batch.

Needs torch, safetensors, torch-lucent and kornia (`pip install torch-lucent kornia==0.5.11`), and
the EfficientNet-Lite0 weights in the extremal cache (`extremal classify assets/chelsea.png` once).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture():
    from lucent.optvis import param
    from lucent.optvis.param.color import color_correlation_normalized
    out = {"decorrelation": torch.tensor(color_correlation_normalized, dtype=torch.float64)}
    torch.manual_seed(0)
    for name, fft, (n, h, w) in [("fourier", True, (2, 11, 12)), ("fourier_square", True, (1, 16, 16)),
                                 ("pixel", False, (2, 9, 7))]:
        params, image_f = param.image(w, h=h, batch=n, fft=fft, decorrelate=True)
        p = params[0]
        with torch.no_grad():
            p.copy_(torch.randn(p.shape) * 0.5)
            img = image_f()
        out[f"{name}_params"] = p.detach().clone().contiguous()
        out[f"{name}_image"] = img.detach().clone().contiguous()
        print(name, tuple(p.shape), "->", tuple(img.shape))
    path = os.path.join(ROOT, "tests/fixtures/lucid_image.safetensors")
    save_file(out, path)
    print("wrote", path)


def speed(steps, channels):
    import golden
    torch.set_grad_enabled(True)  # golden turns it off
    from lucent.optvis import param, transform
    import glob
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    cands = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))
    sd = torch.load(cands[0], map_location="cpu")
    site = "_blocks.10"
    torch.manual_seed(0)
    np.random.seed(0)
    params, image_f = param.image(224, batch=len(channels), fft=True, decorrelate=True)
    normalise = lambda x: (x - 0.5) / 0.5  # Lite0's input normalisation, as extremal's
    transforms = transform.standard_transforms.copy() + [normalise]
    transform_f = transform.compose(transforms)
    opt = torch.optim.Adam(params, lr=5e-2)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        phi = golden.lite0(sd, transform_f(image_f()), until=site)
        loss = -sum(phi[i, c].mean() for i, c in enumerate(channels))
        loss.backward()
        opt.step()
    torch_s = time.perf_counter() - start
    with torch.no_grad():
        img = (image_f() * 255).round() / 255
        phi = golden.lite0(sd, normalise(img), until=site)
        torch_means = [phi[i, c].mean().item() for i, c in enumerate(channels)]
        torch_peaks = [phi[i, c].max().item() for i, c in enumerate(channels)]

    exe = os.path.join(ROOT, "target/release/extremal")
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        out = subprocess.run([exe, "visualize", "--layer", "layer3", "--channel", ",".join(map(str, channels)),
                              "--iterations", str(steps), "--json"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    rep = json.loads(out.stdout)
    ours_s = rep["seconds"]
    print(f"Lite0 layer3, {len(channels)} channels, {steps} steps, {torch.get_num_threads()} threads")
    print(f"  PyTorch (Lucent's recipe) loop {torch_s:8.2f} s")
    print(f"  extremal visualize       loop {ours_s:8.2f} s   whole command {wall:.2f} s")
    print(f"  ratio (extremal / PyTorch)     {ours_s / torch_s:.2f}")
    print("  channel  PyTorch mean  extremal mean  PyTorch peak  extremal peak")
    for c, t, tp, v in zip(channels, torch_means, torch_peaks, rep["visualizations"]):
        print(f"  {c:7d}  {t:12.3f}  {v['value']:13.3f}  {tp:12.3f}  {v['peak']:13.3f}")


def exemplars(copies, batch):
    """Images per second: `extremal exemplars` (whole pass: decode, resize, forward to the site,
    peaks; model loading excluded) against a PyTorch forward to the same site on the same
    images, already decoded and resized, in batches of the same size."""
    import glob
    import shutil
    import golden
    from PIL import Image
    import torch.nn.functional as F
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    cands = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))
    sd = torch.load(cands[0], map_location="cpu")
    sources = sorted(glob.glob(os.path.join(ROOT, "assets/*.png")) + glob.glob(os.path.join(ROOT, "assets/cc0/*.jpg")))
    exe = os.path.join(ROOT, "target/release/extremal")
    with tempfile.TemporaryDirectory() as d:
        images = os.path.join(d, "images")
        os.makedirs(images)
        paths = []
        for c in range(copies):
            for s in sources:
                p = os.path.join(images, f"{c:03d}-{os.path.basename(s)}")
                shutil.copy(s, p)
                paths.append(p)
        n = len(paths)
        out = subprocess.run([exe, "exemplars", "--layer", "layer3", "--images", images, "--batch", str(batch),
                              "--top", "4", "--out", os.path.join(d, "ex")], capture_output=True, text=True, check=True)
        ours = float(out.stdout.split(" images/s")[0].split("new, ")[1])
        xs = []
        for p in paths:
            rgb = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
            t = torch.from_numpy(rgb).permute(2, 0, 1)[None]
            xs.append((F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False) - 0.5) / 0.5)
        x = torch.cat(xs)
        with torch.no_grad():
            golden.lite0(sd, x[:batch], until="_blocks.10")  # warm-up
            start = time.perf_counter()
            for i in range(0, n, batch):
                golden.lite0(sd, x[i:i + batch], until="_blocks.10")
            torch_rate = n / (time.perf_counter() - start)
    print(f"Lite0 layer3, {n} images, batch {batch}, {torch.get_num_threads()} threads")
    print(f"  extremal exemplars (decode, resize, forward, peaks)  {ours:7.1f} images/s")
    print(f"  PyTorch forward to the site (decoded images)        {torch_rate:7.1f} images/s")
    print(f"  rate ratio (extremal / PyTorch)                      {ours / torch_rate:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fixture", "speed", "exemplars"])
    ap.add_argument("--copies", type=int, default=8, help="exemplars: copies of the 9 bundled images")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--channels", default="3,7,10,20,30,50,70,100")
    a = ap.parse_args()
    if a.what == "fixture":
        fixture()
    elif a.what == "exemplars":
        exemplars(a.copies, a.batch)
    else:
        speed(a.steps, [int(c) for c in a.channels.split(",")])


if __name__ == "__main__":
    main()
