#!/usr/bin/env python3
"""End-to-end comparison with TorchRay's extremal_perturbation, side by side in one run.

Development-time only (needs torch, torchray, safetensors and the EfficientNet-Lite0 weights in
the extremal cache). Runs TorchRay and `extremal attribute` on the same input tensor (chelsea,
224x224, EfficientNet-Lite0, class 285, areas 0.05/0.1/0.2, TorchRay's defaults otherwise) and
prints, per area, the IoU of the masks thresholded at 0.5, both final rewards, and the seconds
per iteration of each tool.

    cargo build --release -p extremal-cli
    python3 scripts/torchray_compare.py [--iterations 800] [--model efficientnet-lite0|resnet50]

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
    args = ap.parse_args()
    areas = [0.05, 0.1, 0.2]
    tmp = tempfile.mkdtemp()
    x = golden.lite0_input("chelsea")
    weights = []
    if args.model == "efficientnet-lite0":
        path = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))[0]
        net = Lite0(torch.load(path, map_location="cpu")).eval()
        target = 285
    else:
        import torchvision
        net = getattr(torchvision.models, args.model)(weights=None).eval()
        wpath = os.path.join(tmp, "weights.safetensors")
        save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, wpath)
        weights = ["--weights", wpath]
        x = (x * 0.5 + 0.5 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        target = int(net(x).argmax())
    inp = os.path.join(tmp, "input.safetensors")
    save_file({"input": x.contiguous()}, inp)
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
            m1, m2 = masks[i] > 0.5, masks1[i] > 0.5
            iou = (m1 & m2).sum().item() / max((m1 | m2).sum().item(), 1)
            print(f"| {a} | {iou:.3f} | {torchray_rewards[i]:.3f} | {hist1[i, 0, -1].item():.3f} |")
        return

    def extremal(inp, out):
        t = time.perf_counter()
        subprocess.run([args.binary, "attribute", "--model", args.model, *weights, inp, "--target", str(target),
                        "--areas", ",".join(map(str, areas)), "--iterations", str(args.iterations), "--out", out,
                        "--json"], check=True, stdout=subprocess.DEVNULL)
        secs = (time.perf_counter() - t) / args.iterations
        report = json.load(open(os.path.join(out, "report.json")))
        return load_file(os.path.join(out, "masks.safetensors"))["masks"], [a["reward"] for a in report["areas"]], secs

    def iou(a, b):
        m1, m2 = a > 0.5, b > 0.5
        return (m1 & m2).sum().item() / max((m1 | m2).sum().item(), 1)

    if args.noise_floor:
        # One ulp up or down at 1 pixel in 100 (seeded): a change no photograph would notice.
        g = torch.Generator().manual_seed(1)
        pick = torch.rand(x.shape, generator=g) < 0.01
        up = torch.rand(x.shape, generator=g) < 0.5
        x2 = torch.where(pick, torch.nextafter(x, torch.where(up, x + 1, x - 1)), x)
        inp2 = os.path.join(tmp, "input2.safetensors")
        save_file({"input": x2.contiguous()}, inp2)
        masks2, hist2 = extremal_perturbation(net, x2, target, areas=areas, max_iter=args.iterations)
        runs = {
            "TorchRay": (masks, torchray_rewards),
            "TorchRay, moved input": (masks2, hist2[:, 0, -1].tolist()),
        }
        e1 = extremal(inp, os.path.join(tmp, "out"))
        e2 = extremal(inp2, os.path.join(tmp, "out2"))
        runs["extremal"] = e1[:2]
        runs["extremal, moved input"] = e2[:2]
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            for name, (m, _) in runs.items():
                save_file({"masks": m.contiguous()}, os.path.join(args.save, name.replace(", ", "-").replace(" ", "-") + ".safetensors"))
        print(f"{args.model}, chelsea 224x224, class {target}, {args.iterations} iterations; "
              f"'moved input': {int(pick.sum())} of {x.numel()} values moved by one ulp")
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
                print(f"| {names[i]} / {names[j]} | " + " | ".join(f"{iou(a[k], b[k]):.3f}" for k in range(len(areas))) + " |")
        return

    ours, ours_rewards, ours_s = extremal(inp, os.path.join(tmp, "out"))

    if args.save:
        os.makedirs(args.save, exist_ok=True)
        save_file({"masks": masks.contiguous()}, os.path.join(args.save, "torchray.safetensors"))
        save_file({"masks": ours.contiguous()}, os.path.join(args.save, "extremal.safetensors"))
    print(f"{args.model}, chelsea 224x224, class {target}, {args.iterations} iterations, areas {areas}")
    print("| area | IoU (masks > 0.5) | reward: extremal | TorchRay |")
    print("|---|---|---|---|")
    for i, a in enumerate(areas):
        print(f"| {a} | {iou(ours[i], masks[i]):.3f} | {ours_rewards[i]:.3f} | {torchray_rewards[i]:.3f} |")
    print(f"seconds per iteration: extremal {ours_s:.3f} (whole command, model loading included), "
          f"TorchRay {torchray_s:.3f}; ratio {ours_s / torchray_s:.2f}x")


if __name__ == "__main__":
    main()
