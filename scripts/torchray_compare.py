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

    out = os.path.join(tmp, "out")
    t = time.perf_counter()
    subprocess.run([args.binary, "attribute", "--model", args.model, *weights, inp, "--target", str(target),
                    "--areas", ",".join(map(str, areas)), "--iterations", str(args.iterations), "--out", out, "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    ours_s = (time.perf_counter() - t) / args.iterations
    report = json.load(open(os.path.join(out, "report.json")))
    ours = load_file(os.path.join(out, "masks.safetensors"))["masks"]

    print(f"{args.model}, chelsea 224x224, class {target}, {args.iterations} iterations, areas {areas}")
    print("| area | IoU (masks > 0.5) | reward: extremal | TorchRay |")
    print("|---|---|---|---|")
    for i, a in enumerate(areas):
        m1, m2 = ours[i] > 0.5, masks[i] > 0.5
        iou = (m1 & m2).sum().item() / max((m1 | m2).sum().item(), 1)
        print(f"| {a} | {iou:.3f} | {report['areas'][i]['reward']:.3f} | {torchray_rewards[i]:.3f} |")
    print(f"seconds per iteration: extremal {ours_s:.3f} (whole command, model loading included), "
          f"TorchRay {torchray_s:.3f}; ratio {ours_s / torchray_s:.2f}x")


if __name__ == "__main__":
    main()
