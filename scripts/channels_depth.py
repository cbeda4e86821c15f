#!/usr/bin/env python3
"""Channel masks at depth (issue 20), side by side on this machine: an earlier build of
`extremal` against this one, whole `channels` commands, wall time and kept score, at
EfficientNet-Lite0 `layer2`/`layer3` (its real weights) and ResNet-50 `layer2`/`layer3` (seeded
random weights, seed 0, from `examples/random_weights`), keep 10 and 25, on the bundled
images. Each command runs with both builds in turn, so that the machine's noise falls on both.

With --greedy, greedy forward selection (add the channel that raises the hard-mask score most,
keep times; `extremal::mask::greedy_selection`) on chelsea.png for each site at keep 10 (and
25 with --greedy-25), beside this build's kept score (minutes: it scores keep x channels sets). With --torch, the PyTorch
forward-hook loop of the paper's schedule (300 iterations, the whole network each step, the
mask at ResNet-50 `layer3`) beside this build's whole command on the same weights and input.
With --sweep, `--sweep 1,2,5,10,25,50` at ResNet-50 `layer3` against keep 25 alone. With
--sweep-points, that sweep (`1,2,5,10,25` at Lite0 `layer2`, which has 40 channels) at each
site but ResNet-50 `layer2`, on both images, with both builds: every point's kept score.

    git worktree add /tmp/before <old-commit>
    (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p extremal-cli)
    cargo build --release -p extremal-cli
    cargo build --release -p extremal --example channels_speed --example random_weights
    python3 scripts/channels_depth.py /tmp/before-target/release/extremal [--greedy] [--torch] [--sweep]

Development time only (--torch needs torch, torchvision and safetensors).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = os.path.join(ROOT, "target/release/extremal")
SPEED = os.path.join(ROOT, "target/release/examples/channels_speed")
WORK = os.path.join(ROOT, "target/depth")
IMAGES = ["assets/chelsea.png", "assets/coffee.png"]
KEEPS = [10, 25]


def resnet_weights():
    """ResNet-50's seeded random weights (seed 0) without the random input, and that input."""
    os.makedirs(WORK, exist_ok=True)
    weights = os.path.join(WORK, "resnet50-seed0.safetensors")
    if not os.path.exists(weights):
        both = os.path.join(WORK, "resnet50-seed0-all.safetensors")
        subprocess.run([os.path.join(ROOT, "target/release/examples/random_weights"), "resnet50", "0", "224", "224",
                        both], check=True, cwd=ROOT, capture_output=True)
        # The weights file holds the seeded input too (`__input__`); split it off, in Rust's
        # safetensors layout read by hand so that no Python package is needed.
        split_input(both, weights, os.path.join(WORK, "resnet50-seed0-input.safetensors"))
    return weights


def split_input(src, weights, inputs):
    """Writes `src`'s tensors but `__input__` to `weights`, and `__input__` as `input` to `inputs`."""
    import struct

    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()

    def write(path, names, rename=lambda k: k):
        meta, chunks, offset = {}, [], 0
        for k in names:
            v = header[k]
            a, b = v["data_offsets"]
            chunks.append(data[a:b])
            meta[rename(k)] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [offset, offset + b - a]}
            offset += b - a
        h = json.dumps(meta).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))

    names = [k for k in header if k != "__metadata__"]
    write(weights, [k for k in names if k != "__input__"])
    write(inputs, ["__input__"], lambda k: "input")


def run(binary, args):
    """Wall time and JSON of one command."""
    t0 = time.time()
    out = subprocess.run([binary] + args + ["--json"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    if out.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)}: {out.stderr.strip()}")
    return seconds, json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the earlier build's extremal binary")
    p.add_argument("--new", default=NEW, help="the build to compare (default: this checkout's release build)")
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--greedy-25", action="store_true")
    p.add_argument("--torch", action="store_true")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--sweep-rounds", type=int, default=3, help="alternating rounds of --sweep (default 3)")
    p.add_argument("--sweep-points", action="store_true")
    p.add_argument("--no-table", action="store_true",
                   help="only the parts asked for (--greedy, --sweep, --sweep-points, --torch)")
    a = p.parse_args()
    resnet = resnet_weights()
    sites = [
        ("efficientnet-lite0", [], "layer2"),
        ("efficientnet-lite0", [], "layer3"),
        ("resnet50", ["--model", "resnet50", "--weights", resnet], "layer2"),
        ("resnet50", ["--model", "resnet50", "--weights", resnet], "layer3"),
    ]
    print(f"{'model':<19}{'site':<7}{'keep':>5}  {'image':<12}{'old s':>8}{'new s':>8}{'new/old':>8}"
          f"{'old kept':>11}{'new kept':>11}{'new/old':>8}{'original':>11}")
    worst = 1e9
    for model, extra, layer in [] if a.no_table else sites:
        for keep in KEEPS:
            for image in IMAGES:
                args = ["channels", image, "--layer", layer, "--keep", str(keep)] + extra
                old_s, old = run(a.old, args)
                new_s, new = run(a.new, args)
                ratio = new["kept_score"] / old["kept_score"] if old["kept_score"] else float("nan")
                worst = min(worst, ratio)
                print(f"{model:<19}{layer:<7}{keep:>5}  {os.path.basename(image):<12}{old_s:>8.2f}{new_s:>8.2f}"
                      f"{new_s / old_s:>8.2f}{old['kept_score']:>11.2f}{new['kept_score']:>11.2f}{ratio:>8.3f}"
                      f"{new['original_score']:>11.2f}", flush=True)
    if not a.no_table:
        print(f"lowest new/old kept score: {worst:.3f}")

    if a.greedy:
        print(f"\n{'model':<19}{'site':<7}{'keep':>5}  {'greedy kept':>12}{'greedy s':>10}{'search kept':>12}{'search s':>10}")
        for model, extra, layer in sites:
            weights = resnet if model == "resnet50" else "-"
            for keep in KEEPS if a.greedy_25 else [10]:
                out = subprocess.run([SPEED, model, weights, "assets/chelsea.png", layer, str(keep), "--greedy"],
                                     cwd=ROOT, check=True, capture_output=True, text=True)
                r = json.loads(out.stdout)
                print(f"{model:<19}{layer:<7}{keep:>5}  {r['greedy_score']:>12.2f}{r['greedy_seconds']:>10.1f}"
                      f"{r['kept_score']:>12.2f}{r['seconds']:>10.2f}", flush=True)

    if a.sweep:
        extra = ["--model", "resnet50", "--weights", resnet, "--layer", "layer3"]
        print()
        for name, binary in (("old", a.old), ("new", a.new)):
            # Alternating rounds, medians: one pair of runs is not a measurement on a busy machine.
            singles, sweeps = [], []
            for _ in range(a.sweep_rounds):
                singles.append(run(binary, ["channels", "assets/chelsea.png", "--keep", "25"] + extra)[0])
                sweep_s, sweep = run(binary, ["channels", "assets/chelsea.png", "--sweep", "1,2,5,10,25,50"] + extra)
                sweeps.append(sweep_s)
            single_s, sweep_s = statistics.median(singles), statistics.median(sweeps)
            curve = ", ".join(f"{p['keep']}: {p['kept_score']:.1f}" for p in sweep["sweep"])
            rounds = f" (medians of {a.sweep_rounds} alternating rounds, ratios of the rounds " + ", ".join(
                f"{w / k:.2f}" for w, k in zip(sweeps, singles)) + ")" if a.sweep_rounds > 1 else ""
            print(f"{name}: ResNet-50 layer3: --sweep 1,2,5,10,25,50 {sweep_s:.2f} s, --keep 25 {single_s:.2f} s: "
                  f"{sweep_s / single_s:.2f}x{rounds} (kept scores {curve}; extremal keep {sweep['extremal_keep']})",
                  flush=True)

    if a.sweep_points:
        sweep_points(a.old, a.new, [site for site in sites if site[0] != "resnet50" or site[2] != "layer2"])

    if a.torch:
        torch_loop(resnet, a.new)


def sweep_points(old, new, sites):
    """Each sweep point's kept score with both builds, and how many points the new one keeps
    as much or more of."""
    print(f"\n{'model':<19}{'site':<7}{'image':<12}{'old s':>8}{'new s':>8}  keep: old kept -> new kept (new/old)")
    ratios = []
    for model, extra, layer in sites:
        keeps = "1,2,5,10,25" if model == "efficientnet-lite0" and layer == "layer2" else "1,2,5,10,25,50"
        for image in IMAGES:
            args = ["channels", image, "--layer", layer, "--sweep", keeps] + extra
            old_s, o = run(old, args)
            new_s, n = run(new, args)
            points = []
            for p, q in zip(o["sweep"], n["sweep"]):
                r = q["kept_score"] / p["kept_score"]
                ratios.append(r)
                points.append(f"{p['keep']}: {p['kept_score']:.4g} -> {q['kept_score']:.4g} ({r:.3f})")
            print(f"{model:<19}{layer:<7}{os.path.basename(image):<12}{old_s:>8.2f}{new_s:>8.2f}  " + ", ".join(points),
                  flush=True)
    print(f"new kept >= old kept on {sum(r >= 1 for r in ratios)} of {len(ratios)} points; lowest new/old {min(ratios):.3f}")


def torch_loop(weights, binary):
    """The paper's schedule in PyTorch, a forward hook masking ResNet-50's layer3, the whole
    network each of 300 iterations, beside this build's whole command on the same input."""
    import torch
    import torchvision
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    sd = load_file(weights)
    x = load_file(os.path.join(WORK, "resnet50-seed0-input.safetensors"))["input"]
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(sd, strict=False)
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    target = net(x).argmax().item()
    n, keep = 1024, 25
    mask = torch.ones(1, n, 1, 1, requires_grad=True)
    net.layer3.register_forward_hook(lambda m, i, o: o * mask)
    opt = torch.optim.SGD([mask], lr=0.01, momentum=0.9)
    ref = torch.cat([torch.zeros(n - keep), torch.ones(keep)])
    args = ["channels", os.path.join(WORK, "resnet50-seed0-input.safetensors"), "--model", "resnet50",
            "--weights", weights, "--layer", "layer3", "--keep", "25"]
    # extremal's command before and after the loop: the machine's slow spells fall on both.
    before_s, _ = run(binary, args)
    t0 = time.time()
    for t in range(300):
        lam = 1500 * min(t / 150, 1.0)
        y = net(x)[0, target]
        loss = -y + lam * ((mask.flatten().sort()[0] - ref) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
    torch_s = time.time() - t0
    after_s, r = run(binary, args)
    ours_s = (before_s + after_s) / 2
    print(f"\nResNet-50 layer3 keep 25: PyTorch forward-hook loop, 300 iterations (model loaded) {torch_s:.2f} s; "
          f"extremal channels, whole command {ours_s:.2f} s (mean of {before_s:.2f} s before the loop and "
          f"{after_s:.2f} s after; kept {r['kept_score']:.1f}, original {r['original_score']:.1f}): "
          f"{ours_s / torch_s:.2f}x the PyTorch time")

if __name__ == "__main__":
    main()
