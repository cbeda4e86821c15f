#!/usr/bin/env python3
"""Development-time comparison of the zoo's ResNet-50 with its own ONNX export.

The zoo's seeded random ResNet-50 (seed 0, the weights `extremal bench` uses) is written by
the `random_weights` example, loaded into torchvision's ResNet-50, and exported with both
PyTorch exporters. Then, side by side:
- `extremal channels INPUT --layer layer4 --keep 25` on `--model resnet50 --weights W` and on
  `--model resnet50_<exporter>.onnx`: the kept channels and the kept score;
- `extremal bench` forward + backward-to-the-input time of both, alternating, median of the
  medians: the ratio ONNX / built-in.

Needs torch, torchvision, onnx, onnxscript, safetensors. Run from the repository root:

    cargo build --release -p extremal-cli --example random_weights
    python3 scripts/onnx_resnet50.py [--rounds 3] [--passes 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import warnings

import torch
import torchvision
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
BIN = "target/release"
OUT = "target/onnx-resnet50"


def sh(*args):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--image", default="assets/chelsea.png")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    sh(f"{BIN}/examples/random_weights", "resnet50", "0", "224", "224", f"{OUT}/random.safetensors")
    sd = load_file(f"{OUT}/random.safetensors")
    x = sd.pop("__input__")
    save_file(sd, f"{OUT}/weights.safetensors")
    model = torchvision.models.resnet50(weights=None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.endswith("num_batches_tracked") for m in missing), (missing, unexpected)
    model.eval()
    torch.onnx.export(model, (x,), f"{OUT}/resnet50_ts.onnx", dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "N"}})
    torch.onnx.export(model, (x,), f"{OUT}/resnet50_dynamo.onnx", dynamo=True, external_data=False)

    def channels(model_args):
        out = sh(f"{BIN}/extremal", "channels", *model_args, args.image, "--layer", "layer4", "--keep", "25",
                 "--json")
        return json.loads(out)

    def summary(r):
        kept = sorted(c["index"] for c in r["channels"][: r["keep"]])
        return kept, r["kept_score"], r["original_score"]

    built_in = summary(channels(["--model", "resnet50", "--weights", f"{OUT}/weights.safetensors"]))
    print(f"built-in resnet50: target score {built_in[2]:.4f}, kept score {built_in[1]:.4f}, kept {built_in[0]}")
    for exporter in ["ts", "dynamo"]:
        onnx = summary(channels(["--model", f"{OUT}/resnet50_{exporter}.onnx"]))
        print(f"ONNX ({exporter}):        target score {onnx[2]:.4f}, kept score {onnx[1]:.4f}, kept {onnx[0]}")
        print(f"  same kept channels: {onnx[0] == built_in[0]}; kept scores differ by {abs(onnx[1] - built_in[1]):.2e}")

    def bench(model_args):
        out = sh(f"{BIN}/extremal", "bench", *model_args, "--passes", str(args.passes), "--json")
        return json.loads(out)["forward_backward_s"]

    times = {"built-in": [], "ts": [], "dynamo": []}
    for _ in range(args.rounds):
        times["built-in"].append(bench(["--model", "resnet50"]))
        for exporter in ["ts", "dynamo"]:
            times[exporter].append(bench(["--model", f"{OUT}/resnet50_{exporter}.onnx"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    for exporter in ["ts", "dynamo"]:
        print(f"forward+backward to the input, batch 1: built-in {med['built-in']:.3f} s, "
              f"ONNX ({exporter}) {med[exporter]:.3f} s; ratio {med[exporter] / med['built-in']:.2f}x")


if __name__ == "__main__":
    main()
