#!/usr/bin/env python3
"""Development-time check of extremal's ONNX support on torchvision's classifiers.

Exports resnet18, resnet50, vgg16, googlenet, mobilenet_v3_small, efficientnet_b0, densenet121,
regnet_y_400mf and convnext_tiny (seeded random weights, eval mode, 224x224) with PyTorch's
default (dynamo) exporter or the TorchScript one, then for each prints the largest difference
of extremal's logits and input gradient (of the top logit) from PyTorch's, relative to the
largest value, and whether `extremal channels --layer <last stage> --keep 25` and
`extremal attribute --method grad-cam --layer <last stage>` run on the file.

Needs torch, torchvision, onnx, onnxscript, safetensors. Run from the repository root:

    cargo build --release -p extremal-cli -p extremal-onnx --example onnx_run
    python3 scripts/onnx_torchvision.py [--exporter dynamo|ts] [MODEL ...]
"""
import argparse
import os
import subprocess
import time
import warnings

import torch
import torchvision
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
torch.set_grad_enabled(True)

# model: the site of its last stage, as extremal names it.
MODELS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16": "features.29",
    "googlenet": "inception5b",
    "mobilenet_v3_small": "features.12",
    "efficientnet_b0": "features.8",
    "densenet121": "features.denseblock4",
    "regnet_y_400mf": "trunk_output.block4",
    "convnext_tiny": "features.7",
}
BIN = "target/release"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "ts"])
    ap.add_argument("--out", default="target/onnx-torchvision")
    ap.add_argument("models", nargs="*")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models or MODELS:
        site = MODELS[name]
        torch.manual_seed(0)
        kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, **kw).eval()
        gen = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        x = torch.randn(1, 3, 224, 224, generator=gen)
        path = f"{args.out}/{name}_{args.exporter}.onnx"
        t0 = time.time()
        if args.exporter == "ts":
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                              dynamic_axes={"input": {0: "N"}})
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=False)
        export_s = time.time() - t0
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        target = int(logits[0].argmax())
        logits[0, target].backward()
        save_file({"x": x, "target": torch.tensor([float(target)])}, f"{args.out}/{name}_in.safetensors")
        run = subprocess.run([f"{BIN}/examples/onnx_run", path, f"{args.out}/{name}_in.safetensors",
                              f"{args.out}/{name}_out.safetensors"], capture_output=True, text=True)
        if run.returncode != 0:
            rows.append((name, "-", "-", "-", "-", "-", run.stderr.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            continue
        got = load_file(f"{args.out}/{name}_out.safetensors")

        def rel(a, b):
            return float((a - b).abs().max() / b.abs().max())

        e_logits = rel(got["logits"], logits.detach())
        e_grad = rel(got["input_grad"], xg.grad)
        # PyTorch's own f32 rounding, measured against the same network in f64: where ReLUs sit
        # near zero, the input gradient of a deep random network moves this much by itself.
        m64 = getattr(torchvision.models, name)(weights=None, **kw).eval()
        m64.load_state_dict(model.state_dict())
        m64 = m64.double()
        x64 = x.double().requires_grad_(True)
        m64(x64)[0, target].backward()
        e_floor = rel(xg.grad.double(), x64.grad)
        # extremal in f64 (the file's f32 weights widened) against PyTorch in f64.
        run64 = subprocess.run([f"{BIN}/examples/onnx_run", path, f"{args.out}/{name}_in.safetensors",
                                f"{args.out}/{name}_out64.safetensors", "f64"], capture_output=True, text=True)
        e_grad64 = rel(load_file(f"{args.out}/{name}_out64.safetensors")["input_grad"].double(), x64.grad) \
            if run64.returncode == 0 else float("nan")
        img = "assets/chelsea.png"
        ch = subprocess.run([f"{BIN}/extremal", "channels", "--model", path, img, "--layer", site, "--keep", "25",
                             "--json"], capture_output=True, text=True)
        gc = subprocess.run([f"{BIN}/extremal", "attribute", "--model", path, img, "--method", "grad-cam",
                             "--layer", site, "--json"], capture_output=True, text=True)
        ok = lambda r: "runs" if r.returncode == 0 else "fails: " + (r.stderr.strip().splitlines() or ["?"])[-1]
        rows.append((name, f"{e_logits:.1e}", f"{e_grad:.1e}", f"{e_floor:.1e}", f"{e_grad64:.1e}", ok(ch), ok(gc)))
        print(rows[-1], flush=True)
    print(f"\n| model ({args.exporter}) | logits | input gradient | PyTorch's own f32 gradient vs f64 | "
          "input gradient, both in f64 | channels --keep 25 | grad-cam |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
