#!/usr/bin/env python3
"""End-to-end comparison with TorchRay's extremal_perturbation, side by side in one run.

Development-time only (needs torch, torchray, safetensors and the EfficientNet-Lite0 weights in
the extremal cache). Runs TorchRay and `extremal attribute` on the same input tensor (chelsea,
224x224, EfficientNet-Lite0, class 285, areas 0.05/0.1/0.2, TorchRay's defaults otherwise) and
prints, per area, the IoU of the masks thresholded at 0.5, both final rewards, and the seconds
per iteration of each tool.

    cargo build --release -p extremal-cli
    python3 scripts/torchray_compare.py [--iterations 800] [--model efficientnet-lite0|resnet50]

Parity as a distribution (issue 21, about half an hour per image on 2 cores; not in CI): each tool
runs on the image and on 3 copies with 1 % of its values moved by one ulp (seeds 1, 2, 3), and the
table gives, per image and area, the median IoU over TorchRay-TorchRay, extremal-extremal and
extremal-TorchRay pairs, each tool's mean reward and visible area (with their spread), and the
verdict. One image per call, so that each part fits in a session; the table merges what is there:

    python3 scripts/torchray_compare.py --parity chelsea --results docs/parity
    python3 scripts/torchray_compare.py --parity coffee --results docs/parity
    python3 scripts/torchray_compare.py --parity camera --results docs/parity   # scikit-image's camera.png
    python3 scripts/torchray_compare.py --parity-table --results docs/parity

The fast schedule (`attribute --schedule fast`) against those runs: on each image done by --parity,
extremal's fast schedule on the same inputs (mean reward and visible area), beside TorchRay's and
extremal's default 800-iteration means; then the wall times side by side, TorchRay timed here on
the image (--torchray-iterations N < 800 times N iterations and scales to 800):

    python3 scripts/torchray_compare.py --fast-table --results docs/parity [--torchray-iterations 800] [--no-timing]
    python3 scripts/torchray_compare.py --fast-table --model resnet50 [--torchray-iterations 800]
    python3 scripts/torchray_compare.py --fast-table --results docs/parity --no-timing --fast-seeds 5
    python3 scripts/torchray_compare.py --fast-versus OLD_BINARY [--images FILE ...]

(--fast-seeds S runs the fast schedule on other one-ulp copies, seeds S, S+1, ..., as many as the
parity runs have inputs, instead of the parity runs' own inputs: a check on inputs the schedule
was not chosen on, against the same TorchRay means. --fast-versus runs two builds' fast
schedules on other images, the bundled CC0 images other than camera by default, and compares
their rewards without TorchRay.)

ResNet-50 runs with torchvision's random weights saved to a safetensors file (speed only: the
masks of a random network mean little).
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
from safetensors.torch import load_file, save_file
from torchray.attribution.extremal_perturbation import extremal_perturbation

sys.path.insert(0, os.path.dirname(__file__))
import golden  # noqa: E402

torch.set_grad_enabled(True)


class Lite0(torch.nn.Module):
    def __init__(self, sd):
        super().__init__()
        self.sd = sd
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # TorchRay freezes model.parameters()

    def forward(self, x):
        return golden.lite0(self.sd, x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--binary", default="target/release/extremal")
    ap.add_argument("--save", metavar="DIR",
                    help="also write TorchRay's masks and extremal's to DIR/torchray.safetensors, "
                         "DIR/extremal.safetensors")
    ap.add_argument("--stable-sort", action="store_true",
                    help="diagnosis: run TorchRay with a stable sort in its area constraint (ties in "
                         "index order) instead of PyTorch's default introsort")
    ap.add_argument("--noise-floor", action="store_true",
                    help="run both tools on the input and on the input moved by one ulp at random "
                         "pixels, and print the IoU between every pair of runs: how far each tool's "
                         "own masks move under a change below float precision, against how far the "
                         "two tools are apart")
    ap.add_argument("--self-check", action="store_true",
                    help="only run TorchRay twice (all threads, then one thread) and print the IoU between "
                         "its own runs: the floor that float rounding sets on any comparison")
    ap.add_argument("--parity", metavar="IMAGE", choices=PARITY_IMAGES,
                    help="parity as a distribution on one image (chelsea, coffee or camera): both tools on "
                         "the image and on --perturbations one-ulp copies; writes RESULTS/parity-IMAGE.json "
                         "and the masks beside it, then prints the table of every image done so far")
    ap.add_argument("--perturbations", type=int, default=3)
    ap.add_argument("--divergence", metavar="IMAGE", choices=PARITY_IMAGES,
                    help="how fast extremal's trajectory leaves TorchRay's, against how fast TorchRay's leaves "
                         "itself (1 thread, one-ulp input): a systematic difference shows as an early gap")
    ap.add_argument("--checkpoints", default="2,5,10,20,50,100,200")
    ap.add_argument("--ties", action="store_true",
                    help="the first iteration's ties at the area constraint's cut, and how much the area term's "
                         "gradient moves when only the rounding of the generator's pooling changes")
    ap.add_argument("--pooling-check", metavar="IMAGE", choices=PARITY_IMAGES,
                    help="TorchRay with its mask generator's soft-max pooling written as extremal computes it "
                         "(sum m e / sum e), on the --parity inputs of IMAGE, against those runs: whether "
                         "ulp-level differences at the sort's ties move the 800-iteration result")
    ap.add_argument("--parity-table", action="store_true",
                    help="print the parity table of the images in --results")
    ap.add_argument("--results", default="docs/parity", help="where --parity writes and --parity-table reads (the repository keeps each image's JSON there, so that runs in different sessions merge)")
    ap.add_argument("--fast-table", action="store_true",
                    help="the fast schedule against the --parity runs in --results, and its wall time against "
                         "TorchRay's (with --model resnet50: the wall times only, random weights)")
    ap.add_argument("--torchray-iterations", type=int, default=800,
                    help="--fast-table: TorchRay's iterations timed (scaled to 800 when fewer)")
    ap.add_argument("--fast-seeds", type=int, default=None, metavar="S",
                    help="--fast-table: the fast schedule on the one-ulp copies with seeds S, S+1, ... instead "
                         "of the parity runs' inputs")
    ap.add_argument("--no-timing", action="store_true",
                    help="--fast-table: the reward table only, without timing TorchRay (minutes, not ten: for "
                         "trying a variant of the schedule)")
    ap.add_argument("--fast-versus", metavar="OLD_BINARY",
                    help="the fast schedule of --binary against OLD_BINARY's on --images (no TorchRay): each "
                         "image's rewards and visible areas with both builds, and the summed difference")
    ap.add_argument("--images", nargs="+", default=[],
                    help="--fast-versus: image files (default: the bundled CC0 images other than camera)")
    args = ap.parse_args()
    if args.fast_versus:
        fast_versus(args)
        return
    if args.fast_table:
        fast_table(args)
        return
    if args.parity_table:
        parity_table(args.results)
        return
    if args.parity:
        parity(args)
        return
    if args.divergence:
        divergence(args)
        return
    if args.pooling_check:
        pooling_check(args)
        return
    if args.ties:
        ties(args)
        return
    areas = AREAS
    tmp = tempfile.mkdtemp()
    if args.model == "efficientnet-lite0":
        net, weights, x = lite0_net(), [], golden.lite0_input("chelsea")
        target = 285
    else:
        net, weights, x = random_torchvision(args.model, tmp)
        target = int(net(x).argmax())
    torch.set_num_threads(os.cpu_count())
    if args.stable_sort:
        unstable = torch.Tensor.sort
        torch.Tensor.sort = lambda self, dim=-1, descending=False: unstable(
            self, dim=dim, descending=descending, stable=True)

    t = time.perf_counter()
    masks, hist = extremal_perturbation(net, x, target, areas=areas, max_iter=args.iterations)
    torchray_s = (time.perf_counter() - t) / args.iterations
    torchray_rewards = hist[:, 0, -1].tolist()
    if args.self_check:
        torch.set_num_threads(1)
        masks1, hist1 = extremal_perturbation(net, x, target, areas=areas, max_iter=args.iterations)
        print(f"TorchRay against itself ({os.cpu_count()} threads, then 1 thread), {args.iterations} iterations")
        print("| area | IoU (masks > 0.5) | reward: TorchRay | TorchRay, 1 thread |")
        print("|---|---|---|---|")
        for i, a in enumerate(areas):
            print(f"| {a} | {mask_iou(masks[i], masks1[i]):.3f} | {torchray_rewards[i]:.3f} | {hist1[i, 0, -1].item():.3f} |")
        return

    def extremal(x, name):
        masks, report, secs = run_extremal(args.binary, x, tmp, name, target, ["--iterations", str(args.iterations)],
                                           args.model, weights)
        return masks, [a["reward"] for a in report["areas"]], secs / args.iterations

    if args.noise_floor:
        # One ulp up or down at 1 pixel in 100 (seeded): a change no photograph would notice.
        x2 = one_ulp(x, 1)
        masks2, hist2 = extremal_perturbation(net, x2, target, areas=areas, max_iter=args.iterations)
        runs = {
            "TorchRay": (masks, torchray_rewards),
            "TorchRay, moved input": (masks2, hist2[:, 0, -1].tolist()),
        }
        e1 = extremal(x, "input")
        e2 = extremal(x2, "input2")
        runs["extremal"] = e1[:2]
        runs["extremal, moved input"] = e2[:2]
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            for name, (m, _) in runs.items():
                save_file({"masks": m.contiguous()}, os.path.join(args.save, name.replace(", ", "-").replace(" ", "-") + ".safetensors"))
        print(f"{args.model}, chelsea 224x224, class {target}, {args.iterations} iterations; "
              f"'moved input': {int((x2 != x).sum())} of {x.numel()} values moved by one ulp")
        print("| run | " + " | ".join(f"reward, area {a}" for a in areas) + " |")
        print("|---|" + "---|" * len(areas))
        for name, (_, r) in runs.items():
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r) + " |")
        print()
        print("| IoU (masks > 0.5) between | " + " | ".join(f"area {a}" for a in areas) + " |")
        print("|---|" + "---|" * len(areas))
        names = list(runs)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                a, b = runs[names[i]][0], runs[names[j]][0]
                print(f"| {names[i]} / {names[j]} | " + " | ".join(f"{mask_iou(a[k], b[k]):.3f}" for k in range(len(areas))) + " |")
        return

    ours, ours_rewards, ours_s = extremal(x, "input")

    if args.save:
        os.makedirs(args.save, exist_ok=True)
        save_file({"masks": masks.contiguous()}, os.path.join(args.save, "torchray.safetensors"))
        save_file({"masks": ours.contiguous()}, os.path.join(args.save, "extremal.safetensors"))
    print(f"{args.model}, chelsea 224x224, class {target}, {args.iterations} iterations, areas {areas}")
    print("| area | IoU (masks > 0.5) | reward: extremal | TorchRay |")
    print("|---|---|---|---|")
    for i, a in enumerate(areas):
        print(f"| {a} | {mask_iou(ours[i], masks[i]):.3f} | {ours_rewards[i]:.3f} | {torchray_rewards[i]:.3f} |")
    print(f"seconds per iteration: extremal {ours_s:.3f} (whole command, model loading included), "
          f"TorchRay {torchray_s:.3f}; ratio {ours_s / torchray_s:.2f}x")


PARITY_IMAGES = ["chelsea", "coffee", "camera"]
AREAS = [0.05, 0.1, 0.2]


def parity_input(name):
    """The Lite0 input of a parity image: the bundled PNGs, or scikit-image's camera.png (grey as RGB)."""
    if name != "camera":
        return golden.lite0_input(name)
    import numpy as np
    import torch.nn.functional as F
    from skimage import data
    grey = np.asarray(data.camera(), dtype=np.float32) / 255.0
    t = torch.from_numpy(grey)[None, None].expand(1, 3, *grey.shape).contiguous()
    t = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    return (t - 0.5) / 0.5


def one_ulp(x, seed):
    """x with 1 % of its values (seeded) moved by one ulp, up or down at random."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(x.shape, generator=g) < 0.01
    up = torch.rand(x.shape, generator=g) < 0.5
    return torch.where(pick, torch.nextafter(x, torch.where(up, x + 1, x - 1)), x)


def mean_sd(v, digits=3):
    """`mean ± sd` of the values `v` (sd 0 for one value)."""
    import statistics as st
    return f"{st.mean(v):.{digits}f} ± {st.stdev(v) if len(v) > 1 else 0:.{digits}f}"


def mask_iou(a, b):
    m1, m2 = a > 0.5, b > 0.5
    return (m1 & m2).sum().item() / max((m1 | m2).sum().item(), 1)


def lite0_net():
    """EfficientNet-Lite0 with the weights in extremal's cache, as a module for TorchRay."""
    cands = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))
    if not cands:
        sys.exit("run `extremal classify assets/chelsea.png` once to fetch the Lite0 weights")
    return Lite0(torch.load(cands[0], map_location="cpu")).eval()


def random_torchvision(name, tmp):
    """torchvision's `name` with its random initial weights, those weights saved for extremal
    (`--weights FILE` arguments), and chelsea normalised as torchvision's models expect."""
    import torchvision
    torch.manual_seed(0)  # the same random weights (and so the same top class) on every run
    net = getattr(torchvision.models, name)(weights=None).eval()
    wpath = os.path.join(tmp, "weights.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")},
              wpath)
    x = golden.lite0_input("chelsea")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x * 0.5 + 0.5 - mean[:, None, None]) / std[:, None, None]
    return net, ["--weights", wpath], x


def run_extremal(binary, x, tmp, name, target, options, model="efficientnet-lite0", weights=()):
    """`extremal attribute` on the tensor `x` (written under `tmp` as `name`), areas AREAS, with
    further `options`: returns its masks, its report.json and the seconds of the whole command."""
    inp = os.path.join(tmp, f"{name}.safetensors")
    save_file({"input": x.contiguous()}, inp)
    out = os.path.join(tmp, f"out-{name}")
    t = time.perf_counter()
    subprocess.run([binary, "attribute", "--model", model, *weights, inp, "--target", str(target),
                    "--areas", ",".join(map(str, AREAS)), *options, "--out", out, "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - t
    report = json.load(open(os.path.join(out, "report.json")))
    return load_file(os.path.join(out, "masks.safetensors"))["masks"], report, secs


def parity(args):
    """Both tools on one image and its one-ulp copies; writes RESULTS/parity-IMAGE.json."""
    os.makedirs(args.results, exist_ok=True)
    net = lite0_net()
    torch.set_num_threads(os.cpu_count())
    x0 = parity_input(args.parity)
    with torch.no_grad():
        target = int(net(x0).argmax())
    inputs = [x0] + [one_ulp(x0, seed) for seed in range(1, args.perturbations + 1)]
    tmp = tempfile.mkdtemp()
    runs = {"torchray": [], "extremal": []}
    for i, x in enumerate(inputs):
        t = time.perf_counter()
        masks, hist = extremal_perturbation(net, x, target, areas=AREAS, max_iter=args.iterations)
        secs = time.perf_counter() - t
        runs["torchray"].append({"masks": masks, "reward": hist[:, 0, -1].tolist(),
                                 "visible_area": masks.mean((1, 2, 3)).tolist(), "seconds": secs})
        print(f"{args.parity} input {i}: TorchRay {secs:.0f} s, rewards {runs['torchray'][-1]['reward']}", flush=True)
        masks, report, secs = run_extremal(args.binary, x, tmp, f"input{i}", target,
                                           ["--iterations", str(args.iterations)])
        runs["extremal"].append({"masks": masks,
                                 "reward": [a["reward"] for a in report["areas"]],
                                 "visible_area": [a["visible_area"] for a in report["areas"]], "seconds": secs})
        print(f"{args.parity} input {i}: extremal {secs:.0f} s, rewards {runs['extremal'][-1]['reward']}", flush=True)
    t_runs, e_runs = runs["torchray"], runs["extremal"]
    result = {"image": args.parity, "target": target, "iterations": args.iterations,
              "perturbations": args.perturbations, "areas": []}
    for k, a in enumerate(AREAS):
        def pairs(r):
            return [mask_iou(r[i]["masks"][k], r[j]["masks"][k]) for i in range(len(r)) for j in range(i + 1, len(r))]
        result["areas"].append({
            "area": a,
            "iou_torchray_torchray": pairs(t_runs),
            "iou_extremal_extremal": pairs(e_runs),
            "iou_extremal_torchray": [mask_iou(e["masks"][k], t["masks"][k]) for e in e_runs for t in t_runs],
            "reward_torchray": [r["reward"][k] for r in t_runs],
            "reward_extremal": [r["reward"][k] for r in e_runs],
            "visible_area_torchray": [r["visible_area"][k] for r in t_runs],
            "visible_area_extremal": [r["visible_area"][k] for r in e_runs],
        })
    result["seconds_torchray"] = [r["seconds"] for r in t_runs]
    result["seconds_extremal"] = [r["seconds"] for r in e_runs]
    for tool, r in runs.items():
        save_file({f"input{i}": run["masks"].contiguous() for i, run in enumerate(r)},
                  os.path.join(args.results, f"parity-{args.parity}-{tool}.safetensors"))
    with open(os.path.join(args.results, f"parity-{args.parity}.json"), "w") as f:
        json.dump(result, f, indent=1)
    parity_table(args.results)


def torchray_trajectory(net, x, target, checkpoints, threads, native_conv=False):
    """TorchRay's masks after each of `checkpoints` iterations (what `max_iter=N` returns: the mask
    of the last iteration's parameters, before its step), in one run of max(checkpoints).
    `native_conv` turns oneDNN off: PyTorch's own convolution kernels, another implementation of
    the same network, whose float rounding differs as extremal's does."""
    from torchray.attribution.extremal_perturbation import MaskGenerator
    snaps = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            snaps.append(self.param_groups[0]["params"][0].detach().clone())
            return super().step(closure)

    saved, saved_threads = torch.optim.SGD, torch.get_num_threads()
    torch.optim.SGD = Recording
    torch.set_num_threads(threads)
    try:
        with torch.backends.mkldnn.flags(enabled=not native_conv):
            extremal_perturbation(net, x, target, areas=AREAS, max_iter=max(checkpoints))
    finally:
        torch.optim.SGD = saved
        torch.set_num_threads(saved_threads)
    gen = MaskGenerator(x.shape[2:], 7, 21)
    with torch.no_grad():
        return {n: gen.generate(snaps[n - 1])[0] for n in checkpoints}


def divergence(args):
    """Mean |mask difference| between runs after N iterations: each tool against itself on a one-ulp
    copy of the input; TorchRay against itself with PyTorch's own convolutions instead of oneDNN's
    (two implementations of one network, as extremal and TorchRay are); extremal against both.
    Float noise grows at the process's own rate; a systematic difference shows as an E-T gap that
    the T-T native-conv gap does not have."""
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    net = lite0_net()
    x = parity_input(args.divergence)
    x1 = one_ulp(x, 1)
    with torch.no_grad():
        target = int(net(x).argmax())
    tmp = tempfile.mkdtemp()

    def extremal_trajectory(x, name):
        return {n: run_extremal(args.binary, x, tmp, f"{name}-{n}", target, ["--iterations", str(n)])[0]
                for n in checkpoints}

    threads = os.cpu_count()
    runs = {
        "T": torchray_trajectory(net, x, target, checkpoints, threads),
        "T one-ulp": torchray_trajectory(net, x1, target, checkpoints, threads),
        "T native conv": torchray_trajectory(net, x, target, checkpoints, threads, native_conv=True),
        "E": extremal_trajectory(x, "x"),
        "E one-ulp": extremal_trajectory(x1, "x1"),
    }
    pairs = [("T", "T one-ulp"), ("E", "E one-ulp"), ("T", "T native conv"), ("E", "T"), ("E", "T native conv")]
    print(f"{args.divergence} (class {target}), Lite0: mean |mask difference| after N iterations, per area "
          f"{AREAS} (TorchRay on {threads} threads unless said)")
    print("| N | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    for n in checkpoints:
        cells = []
        for a, b in pairs:
            d = (runs[a][n] - runs[b][n]).abs().mean((1, 2, 3)).tolist()
            cells.append(" ".join(f"{v:.1e}" for v in d))
        print(f"| {n} | " + " | ".join(cells) + " |")


def pooling_as_extremal(self, mask_in):
    """TorchRay's MaskGenerator.generate with the soft-max pooling computed as extremal's
    generator computes it: sum(m e) / sum(e), e = exp(20 (m - max m)), instead of
    sum(m softmax(20 m)). The same function; its values differ by a few ulps."""
    import torch.nn.functional as F
    mask = F.unfold(mask_in, (2 * self.radius + 1,) * 2, padding=(self.padding,) * 2)
    mask = mask.reshape(len(mask_in), -1, self.shape_mid[0], self.shape_mid[1])
    mask = F.interpolate(mask, size=self.shape_up, mode="nearest")
    mask = F.pad(mask, (0, -self.step + 1, 0, -self.step + 1))
    mask = self.weight * mask
    e = torch.exp(self.coldness * (mask - mask.max(dim=1, keepdim=True)[0]))
    mask = ((mask * e).sum(dim=1, keepdim=True) / e.sum(dim=1, keepdim=True)).clamp(min=0, max=1)
    m = round(self.margin)
    return mask[:, :, m:m + self.shape[0], m:m + self.shape[1]], mask


def first_iteration_ties(gen_fn, shape):
    """At the first iteration (parameters all 1), with the generator `gen_fn`: the number of
    distinct mask values; per area, how many values tie with the one at the area constraint's
    cut (those whose share of the area term the sort's tie order decides); and the gradient of
    TorchRay's area term (weight 300) with respect to the parameters, (areas, 1, h, w)."""
    from torchray.attribution.extremal_perturbation import MaskGenerator
    gen = MaskGenerator(shape, 7, 21)
    p = torch.ones(len(AREAS), 1, *gen.shape_in, requires_grad=True)
    full = gen_fn(gen, p)[1].reshape(len(AREAS), -1)
    n = full.shape[1]
    ref = torch.ones(len(AREAS), n)
    for i, a in enumerate(AREAS):
        ref[i, :int(n * (1 - a))] = 0
    srt = full.sort(dim=1)[0]
    (((srt - ref) ** 2).mean(dim=1) * 300).sum().backward()
    s0 = srt[0].detach()
    ties = [int((s0 == s0[int(n * (1 - a))]).sum()) for a in AREAS]
    return len(torch.unique(full[0].detach())), ties, p.grad


def ties(args):
    """How TorchRay's first step depends on the rounding of its generator's pooling."""
    from torchray.attribution.extremal_perturbation import MaskGenerator
    shape = (224, 224)
    results = {name: first_iteration_ties(fn, shape) for name, fn in
               [("TorchRay", MaskGenerator.generate), ("TorchRay, pooling as extremal", pooling_as_extremal)]}
    print("first iteration (all parameters 1), 224x224: the mask's distinct values (of 67,600) and the values "
          "tied at the area constraint's cut")
    for name, (distinct, tied, _) in results.items():
        print(f"  {name}: {distinct} distinct; tied at the cut of area "
              + ", ".join(f"{a}: {t}" for a, t in zip(AREAS, tied)))
    g, g2 = results["TorchRay"][2], results["TorchRay, pooling as extremal"][2]
    print("  the area term's gradient with respect to the parameters, pooling as extremal against TorchRay's: "
          "mean |difference| / mean |gradient| per area "
          + ", ".join(f"{a}: {(g[k] - g2[k]).abs().mean() / g[k].abs().mean():.2%}" for k, a in enumerate(AREAS)))


def pooling_check(args):
    """TorchRay with extremal's way of computing the pooling, on IMAGE's parity inputs."""
    import statistics as st
    from torchray.attribution.extremal_perturbation import MaskGenerator
    stored = json.load(open(os.path.join(args.results, f"parity-{args.pooling_check}.json")))
    # The masks of the --parity runs, where that run was on this machine (not kept in the repository).
    stored_masks = {}
    for tool in ("torchray", "extremal"):
        f = os.path.join(args.results, f"parity-{args.pooling_check}-{tool}.safetensors")
        if os.path.exists(f):
            stored_masks[tool] = load_file(f)
    net = lite0_net()
    torch.set_num_threads(os.cpu_count())
    x0 = parity_input(args.pooling_check)
    inputs = [x0] + [one_ulp(x0, seed) for seed in range(1, stored["perturbations"] + 1)]
    ties(args)
    saved = MaskGenerator.generate
    MaskGenerator.generate = pooling_as_extremal
    runs = []
    try:
        for i, x in enumerate(inputs):
            masks, hist = extremal_perturbation(net, x, stored["target"], areas=AREAS, max_iter=args.iterations)
            runs.append((masks, hist[:, 0, -1].tolist()))
            print(f"input {i}: rewards {[round(r, 3) for r in runs[-1][1]]}", flush=True)
    finally:
        MaskGenerator.generate = saved
    print(f"{args.pooling_check}: TorchRay (T), TorchRay with the pooling computed as extremal does (P), extremal (E); "
          f"{len(inputs)} inputs as --parity")
    print("| area | reward T: mean ± sd | P | E | median IoU T-T | P-P | E-E | E-T | P-T | P-E |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def against(tool, k):
        if tool not in stored_masks:
            return "–"
        other = [stored_masks[tool][f"input{i}"][k] for i in range(len(inputs))]
        return f"{st.median(mask_iou(m[k], o) for m, _ in runs for o in other):.3f}"

    for k, a in enumerate(stored["areas"]):
        p_rewards = [r[k] for _, r in runs]
        pp = st.median(mask_iou(runs[i][0][k], runs[j][0][k]) for i in range(len(runs)) for j in range(i + 1, len(runs)))
        print(f"| {a['area']} | {mean_sd(a['reward_torchray'])} | {mean_sd(p_rewards)} | {mean_sd(a['reward_extremal'])} "
              f"| {st.median(a['iou_torchray_torchray']):.3f} | {pp:.3f} | {st.median(a['iou_extremal_extremal']):.3f} "
              f"| {st.median(a['iou_extremal_torchray']):.3f} | {against('torchray', k)} | {against('extremal', k)} |")


def parity_table(results):
    """The parity table of every parity-IMAGE.json in `results`, with the verdict per image and area."""
    import statistics as st
    rows = []
    for name in PARITY_IMAGES:
        p = os.path.join(results, f"parity-{name}.json")
        if os.path.exists(p):
            rows.append(json.load(open(p)))
    if not rows:
        sys.exit(f"no parity-IMAGE.json in {results}: run --parity IMAGE first")
    r0 = rows[0]
    print(f"EfficientNet-Lite0, top-1 class, {r0['iterations']} iterations; each tool on the image and on "
          f"{r0['perturbations']} copies with 1 % of values moved by one ulp (seeds 1..{r0['perturbations']})")
    print("| image (class) | area | median IoU T-T | E-E | E-T | reward T: mean ± sd | E: mean ± sd "
          "| visible area T | E | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    verdicts = []
    for r in rows:
        for a in r["areas"]:
            tt, ee, et = (st.median(a[k]) for k in ("iou_torchray_torchray", "iou_extremal_extremal", "iou_extremal_torchray"))
            rt, re = st.mean(a["reward_torchray"]), st.mean(a["reward_extremal"])
            iou_ok = et >= tt - 0.05
            reward_ok = re >= rt - max(0.05 * abs(rt), 0.25)
            ok = iou_ok and reward_ok
            verdicts.append(ok)
            why = "holds" if ok else "fails: " + ", ".join(
                w for w, bad in (("IoU", not iou_ok), ("reward", not reward_ok)) if bad)
            print(f"| {r['image']} ({r['target']}) | {a['area']} | {tt:.3f} | {ee:.3f} | {et:.3f} "
                  f"| {mean_sd(a['reward_torchray'])} | {mean_sd(a['reward_extremal'])} "
                  f"| {mean_sd(a['visible_area_torchray'])} | {mean_sd(a['visible_area_extremal'])} | {why} |")
    print(f"parity holds on {sum(verdicts)} of {len(verdicts)} image-area pairs "
          "(median IoU E-T >= median IoU T-T - 0.05 and mean reward E >= mean reward T - max(5 %, 0.25))")


def fast_table(args):
    """The fast schedule's rewards against the parity runs, and its wall time against TorchRay's."""
    import statistics as st
    tmp = tempfile.mkdtemp()

    def extremal_fast(x, name, weights=(), model="efficientnet-lite0", target=None):
        _, report, secs = run_extremal(args.binary, x, tmp, name, target, ["--schedule", "fast"], model, weights)
        return report, secs

    def torchray_seconds(net, x, target):
        t = time.perf_counter()
        extremal_perturbation(net, x, target, areas=AREAS, max_iter=args.torchray_iterations)
        return (time.perf_counter() - t) * 800 / args.torchray_iterations

    torch.set_num_threads(os.cpu_count())
    scaled = "" if args.torchray_iterations == 800 else \
        f" (timed over {args.torchray_iterations} iterations, scaled to 800)"
    if args.model != "efficientnet-lite0":
        net, weights, x = random_torchvision(args.model, tmp)
        with torch.no_grad():
            target = int(net(x).argmax())
        report, fast_s = extremal_fast(x, "resnet", weights, args.model, target)
        torchray_s = torchray_seconds(net, x, target)
        print(f"{args.model} (random weights), chelsea, class {target}: TorchRay 800 iterations {torchray_s:.1f} s"
              f"{scaled}; extremal --schedule fast, {report['iterations']} iterations, whole command {fast_s:.1f} s: "
              f"{fast_s / torchray_s:.3f}x")
        return
    net = lite0_net()
    rows, timings = [], []
    for name in PARITY_IMAGES:
        p = os.path.join(args.results, f"parity-{name}.json")
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        x0 = parity_input(name)
        if args.fast_seeds is None:
            inputs = [x0] + [one_ulp(x0, seed) for seed in range(1, r["perturbations"] + 1)]
        else:
            inputs = [one_ulp(x0, args.fast_seeds + i) for i in range(r["perturbations"] + 1)]
        fast = [extremal_fast(x, f"{name}{i}", target=r["target"]) for i, x in enumerate(inputs)]
        iterations = fast[0][0]["iterations"]
        fast_s = st.mean(s for _, s in fast)
        # TorchRay's time does not depend on the image: timed on the first one only.
        torchray_s = torchray_seconds(net, x0, r["target"]) if not timings and not args.no_timing else None
        timings.append((name, torchray_s, st.mean(r["seconds_extremal"]), fast_s, iterations))
        for k, a in enumerate(r["areas"]):
            rewards = [f[0]["areas"][k]["reward"] for f in fast]
            visible = [f[0]["areas"][k]["visible_area"] for f in fast]
            rows.append((name, r["target"], a, rewards, visible))
    if not rows:
        sys.exit(f"no parity-IMAGE.json in {args.results}: run --parity IMAGE first")
    n = len(rows[0][3])
    over = f"the image and {n - 1} one-ulp copies" if args.fast_seeds is None else \
        f"{n} one-ulp copies (seeds {args.fast_seeds}..{args.fast_seeds + n - 1}; T and E: the parity runs' inputs)"
    print(f"EfficientNet-Lite0, top-1 class; mean (± sd) over {over}; T: TorchRay, "
          f"800 iterations; E: extremal, TorchRay's schedule, 800 iterations; F: extremal --schedule fast, "
          f"{iterations} iterations")
    # TorchRay's own visible areas exceed the targets (its area constraint counts a margin around
    # the image), so F is held to T's visible area: at most 0.01 above it.
    print("| image (class) | area | reward T | E | F | visible area T | F | F's reward >= T's, visible area "
          "<= T's + 0.01 |")
    print("|---|---|---|---|---|---|---|---|")

    met = 0
    for name, target, a, rewards, visible in rows:
        ok_r = st.mean(rewards) >= st.mean(a["reward_torchray"])
        ok_v = st.mean(visible) <= st.mean(a["visible_area_torchray"]) + 0.01
        met += ok_r and ok_v
        verdict = "yes" if ok_r and ok_v else "no: " + ", ".join(
            w for w, bad in (("reward", not ok_r), ("visible area", not ok_v)) if bad)
        print(f"| {name} ({target}) | {a['area']} | {mean_sd(a['reward_torchray'], 2)} | {mean_sd(a['reward_extremal'], 2)} "
              f"| {mean_sd(rewards, 2)} | {mean_sd(a['visible_area_torchray'])} | {mean_sd(visible)} | {verdict} |")
    print(f"the fast schedule meets TorchRay's mean reward on {met} of {len(rows)} image-area pairs")
    if args.no_timing:
        return
    print()
    torchray_s = timings[0][1]
    print(f"TorchRay, 800 iterations, timed here on {timings[0][0]}{scaled}: {torchray_s:.1f} s")
    print("| image | extremal fast, whole command (mean of its runs here) | fast / TorchRay | extremal, 800 "
          "iterations, whole command (--parity runs, mean) |")
    print("|---|---|---|---|")
    for name, _, e, f, it in timings:
        print(f"| {name} | {f:.1f} s ({it} iterations) | {f / torchray_s:.3f}x | {e:.1f} s |")


def fast_versus(args):
    """`attribute --schedule fast` with two builds on the same images: a check of a change to the
    fast schedule on images it was not chosen on."""
    images = args.images or sorted(
        p for p in glob.glob("assets/cc0/*.jpg") if not p.endswith("camera.jpg"))
    areas = ",".join(map(str, AREAS))

    def run(binary, image):
        out = subprocess.run([binary, "attribute", image, "--areas", areas, "--schedule", "fast", "--json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    print(f"EfficientNet-Lite0, top-1 class, --schedule fast; old: {args.fast_versus}; new: {args.binary}")
    print("| image (class) | area | reward old | new | new - old | visible area old | new |")
    print("|---|---|---|---|---|---|---|")
    diffs = []
    for image in images:
        old, new = run(args.fast_versus, image), run(args.binary, image)
        for a, b in zip(old["areas"], new["areas"]):
            d = b["reward"] - a["reward"]
            diffs.append(d)
            print(f"| {os.path.basename(image)} ({new['target']}) | {a['area']} | {a['reward']:.2f} | "
                  f"{b['reward']:.2f} | {d:+.2f} | {a['visible_area']:.3f} | {b['visible_area']:.3f} |")
    better = sum(d > 0 for d in diffs)
    print(f"new - old summed over {len(diffs)} image-area pairs: {sum(diffs):+.2f}; new higher on {better}")


if __name__ == "__main__":
    main()
