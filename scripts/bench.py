"""Side-by-side timing of forward and forward+backward-to-the-input passes: PyTorch and extremal.

Development-time only (needs torch and torchvision). For each model and batch, in `--rounds`
alternating rounds, runs `extremal bench --json` and then the same passes in PyTorch (same
threads, same warm-up, median of the same number of passes), and prints the median over rounds
of each side's time and their ratio (extremal / PyTorch: below 1 is faster), with the range of
the rounds' own ratios. Alternating puts the machine's slow spells on both sides.

    cargo build --release -p extremal-cli
    python3 scripts/bench.py [--models resnet50,efficientnet-lite0] [--batches 1,3] [--passes 5] [--rounds 3]

The PyTorch EfficientNet-Lite0 is the functional one of scripts/golden.py (TF SAME padding).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from golden import STAGES, lite0  # noqa: E402

torch.set_grad_enabled(True)  # golden.py turns gradients off at import


def lite0_random_state():
    """A state dict of EfficientNet-Lite0's shapes, random values."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def conv(name, cout, cin, k):
        sd[name] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(name, c):
        sd[name + ".weight"] = torch.ones(c)
        sd[name + ".bias"] = torch.zeros(c)
        sd[name + ".running_mean"] = torch.zeros(c)
        sd[name + ".running_var"] = torch.ones(c)

    conv("_conv_stem.weight", 32, 3, 3)
    bn("_bn0", 32)
    i = 0
    for reps, k, s, e, cin0, cout in STAGES:
        for r in range(reps):
            p = f"_blocks.{i}."
            cin = cin0 if r == 0 else cout
            mid = cin * e
            if e != 1:
                conv(p + "_expand_conv.weight", mid, cin, 1)
                bn(p + "_bn0", mid)
            conv(p + "_depthwise_conv.weight", mid, 1, k)
            bn(p + "_bn1", mid)
            conv(p + "_project_conv.weight", cout, mid, 1)
            bn(p + "_bn2", cout)
            i += 1
    conv("_conv_head.weight", 1280, 320, 1)
    bn("_bn1", 1280)
    sd["_fc.weight"] = torch.randn(1000, 1280, generator=g) * 0.01
    sd["_fc.bias"] = torch.zeros(1000)
    return sd


def torch_model(name):
    if name == "efficientnet-lite0":
        sd = lite0_random_state()
        return lambda x: lite0(sd, x)
    net = getattr(torchvision.models, name)(weights=None).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def median_time(passes, f):
    f()
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def torch_bench(net, batch, passes, size):
    x = torch.randn(batch, 3, size, size)

    def fwd():
        with torch.no_grad():
            net(x).sum().item()

    def fwd_bwd():
        xv = x.clone().requires_grad_(True)
        y = net(xv)
        (g,) = torch.autograd.grad(y[:, 0].sum(), xv)
        g.sum().item()

    return median_time(passes, fwd), median_time(passes, fwd_bwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,efficientnet-lite0,resnet18,vgg16,googlenet")
    ap.add_argument("--batches", default="1,3")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--binary", default="target/release/extremal")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides (medians printed)")
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    print(f"{threads} threads, PyTorch {torch.__version__}, median of {args.passes} passes after one warm-up, "
          f"224x224; {args.rounds} alternating rounds: median over rounds (range of the rounds' ratios)")
    print("| model | batch | forward: extremal | PyTorch | ratio | fwd+bwd: extremal | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    kernels = "?"

    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    for name in args.models.split(","):
        net = torch_model(name)
        for batch in [int(b) for b in args.batches.split(",")]:
            rounds = []
            for _ in range(args.rounds):
                out = subprocess.run([args.binary, "bench", "--model", name, "--batch", str(batch),
                                      "--passes", str(args.passes), "--json"],
                                     check=True, capture_output=True, text=True).stdout
                ours = json.loads(out)
                tf, tb = torch_bench(net, batch, args.passes, 224)
                rounds.append((ours["forward_s"], tf, ours["forward_backward_s"], tb))
                kernels = ours.get("kernels", "?")
            of, tf, ob, tb = (median([r[i] for r in rounds]) for i in range(4))
            rf = [r[0] / r[1] for r in rounds]
            rb = [r[2] / r[3] for r in rounds]
            print(f"| {name} | {batch} | {of:.3f} s | {tf:.3f} s | {of / tf:.2f}x ({min(rf):.2f}-{max(rf):.2f}) "
                  f"| {ob:.3f} s | {tb:.3f} s | {ob / tb:.2f}x ({min(rb):.2f}-{max(rb):.2f}) |", flush=True)
    # Which CPU, and which kernel builds each side ran (the ratios depend on both).
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"CPU: {cpu}; extremal's kernels: {kernels}; PyTorch's: {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
