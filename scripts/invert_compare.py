#!/usr/bin/env python3
"""Feature inversion side by side with a PyTorch implementation of the same objective.

Development-time only (needs torch, safetensors and the EfficientNet-Lite0 weights in the
extremal cache). For each layer, runs `extremal invert` and then the same optimisation written
in PyTorch (Mahendran & Vedaldi's objective with extremal's defaults: pixel parametrisation,
Adam with learning rate 0.1 x the scale of the random start, x0.3 at 50 % and 80 % of the run,
alpha-norm (alpha 6, weight 1e-3) and total variation (beta 2, the weight extremal reports),
both scaled by the natural-image norm, and, at a rectified site, the redirected gradient on the
ReLU6 that produces it for the first 30 % of the run) on the same input tensor, and prints the relative feature
error each reaches and the seconds per iteration of each (the optimisation loop only; model
loading excluded on both sides).

    cargo build --release -p extremal-cli
    python3 scripts/invert_compare.py [--iterations 400] [--layers layer2,layer3,layer4]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import golden  # noqa: E402

torch.set_grad_enabled(True)

SITES = {"layer1": "_blocks.2", "layer2": "_blocks.4", "layer3": "_blocks.10", "layer4": "_head_act"}


class RedirectedReLU6(torch.autograd.Function):
    """ReLU6 whose backward also passes gradients that would revive a dead unit."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp(0, 6)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        live = (y > 0) & (y < 6)
        revive = ((y <= 0) & (g < 0)) | ((y >= 6) & (g > 0))
        return g * (live | revive).to(g.dtype)


def torch_invert(sd, x, site, iterations, tv_weight, lr=0.1, alpha=6.0, alpha_weight=1e-3,
                 steps=(0.5, 0.8), decay=0.3, redirect=0.3, seed=0):
    n, c, h, w = x.shape
    norm = (x.pow(2).sum() / (h * w)).sqrt().item()
    v = norm / 6.5
    with torch.no_grad():
        phi0 = golden.lite0(sd, x, until=site)
    den = phi0.pow(2).sum()
    # As extremal: redirect only when the site is rectified (exact zeros in the target).
    if not (phi0 == 0).any():
        redirect = 0.0
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(x.shape, generator=g)
    init = init * norm / (init.pow(2).sum() / (h * w)).sqrt()
    p = init.clone().requires_grad_(True)
    rms = init.pow(2).mean().sqrt().item()
    opt = torch.optim.Adam([p], lr=lr * rms)
    start = time.perf_counter()
    for t in range(iterations):
        frac = t / iterations
        for group in opt.param_groups:
            group["lr"] = lr * rms * decay ** sum(frac >= s for s in steps)
        act = RedirectedReLU6.apply if t < round(redirect * iterations) else F.relu6
        phi = golden.lite0(sd, p, until=site, act=act)
        feature = (phi - phi0).pow(2).sum() / den
        a = p.pow(2).pow(alpha / 2).sum() / (h * w * norm ** alpha)
        base = p[..., : h - 1, : w - 1]
        dx = p[..., : h - 1, 1:] - base
        dy = p[..., 1:, : w - 1] - base
        tv = (dx.pow(2) + dy.pow(2)).sum() / (h * w * v ** 2)
        loss = feature + alpha_weight * a + tv_weight * tv
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = (time.perf_counter() - start) / iterations
    with torch.no_grad():
        err = ((golden.lite0(sd, p, until=site) - phi0).pow(2).sum() / den).sqrt().item()
    return err, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--layers", default="layer2,layer3,layer4")
    ap.add_argument("--binary", default="target/release/extremal")
    args = ap.parse_args()
    path = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))[0]
    sd = torch.load(path, map_location="cpu")
    x = golden.lite0_input("chelsea")
    tmp = tempfile.mkdtemp()
    inp = os.path.join(tmp, "input.safetensors")
    save_file({"input": x.contiguous()}, inp)
    print(f"efficientnet-lite0, chelsea 224x224, {args.iterations} iterations, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| layer | site | relative error: extremal | PyTorch | s/iteration: extremal | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|")
    for layer in args.layers.split(","):
        out = subprocess.run([args.binary, "invert", "--model", "efficientnet-lite0", "--weights", path, inp,
                              "--layer", layer, "--iterations", str(args.iterations), "--json"],
                             check=True, capture_output=True, text=True).stdout
        ours = json.loads(out)
        err, secs = torch_invert(sd, x, SITES[layer], args.iterations, ours["tv_weight"])
        ratio = ours["seconds_per_iteration"] / secs
        print(f"| {layer} | `{ours['site']}` | {ours['relative_error']:.3f} | {err:.3f} | "
              f"{ours['seconds_per_iteration']:.3f} | {secs:.3f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
