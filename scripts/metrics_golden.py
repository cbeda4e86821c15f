#!/usr/bin/env python3
"""Golden deletion / insertion curves for `tests/metrics.rs`, computed as RISE's evaluation
code (Petsiuk et al. 2018, `CausalMetric`) defines them.

Development-time only (needs torch, scipy, safetensors and the EfficientNet-Lite0 weights in
the extremal cache). EfficientNet-Lite0 on chelsea (class 285), with a fixed synthetic saliency
map (a Gaussian blob plus a ramp, so that the pixel order has no ties): steps of H*W/224
pixels, deletion sets them to 0, insertion starts from the image blurred with RISE's
`gkern(11, 5)` (scipy's gaussian_filter of a delta), score = softmax probability of the class,
AUC = (sum - first/2 - last/2) / (points - 1).

    python3 scripts/metrics_golden.py
"""
import glob
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.ndimage import gaussian_filter

sys.path.insert(0, os.path.dirname(__file__))
import golden  # noqa: E402

OUT = "tests/fixtures/metrics_lite0.safetensors"


def gkern(klen, nsig):
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def causal(net, img, sal, target, mode, step=224):
    hw = img.shape[2] * img.shape[3]
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = F.conv2d(img, gkern(11, 5), padding=11 // 2), img.clone()
    order = np.flip(np.argsort(sal.reshape(-1), kind="stable"))
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            p = net(start).softmax(-1)
        scores.append(p[0, target].item())
        if i < n_steps:
            coords = torch.from_numpy(order[step * i:step * (i + 1)].copy())
            start.view(1, 3, hw)[0, :, coords] = finish.view(1, 3, hw)[0, :, coords]
    arr = np.array(scores)
    return arr, (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


def main():
    path = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))[0]
    sd = torch.load(path, map_location="cpu")
    x = golden.lite0_input("chelsea")
    h, w = x.shape[2:]
    yy, xx = np.mgrid[0:h, 0:w]
    sal = np.exp(-((yy - 90) ** 2 + (xx - 120) ** 2) / (2 * 40.0 ** 2)) + 1e-4 * (yy * w + xx) / (h * w)
    net = lambda t: golden.lite0(sd, t)  # noqa: E731
    out = {"input": x.contiguous(), "saliency": torch.from_numpy(sal.astype("float64"))[None, None].contiguous(),
           "blur_kernel": gkern(11, 5)[0, 0].contiguous()}
    for mode in ["del", "ins"]:
        arr, auc = causal(net, x.clone(), sal, 285, mode)
        out[f"{mode}_scores"] = torch.from_numpy(arr)
        out[f"{mode}_auc"] = torch.tensor([auc], dtype=torch.float64)
        print(mode, "points", len(arr), "auc", auc)
    save_file(out, OUT)


if __name__ == "__main__":
    main()
