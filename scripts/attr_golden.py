#!/usr/bin/env python3
"""Golden saliency maps of TorchRay's attribution methods, for `tests/attr.rs`.

Development-time only (needs torch, torchvision, torchray, safetensors). Uses the seeded random
ResNet-50 that `tests/golden.rs` also uses (weights and input written by the random_weights
example), takes its top-1 class as the target, and saves TorchRay's gradient, deconvnet, guided
backprop, Grad-CAM and linear approximation (at `layer4`) maps, and RISE from 64 masks at
224x224 whose grids and shifts (drawn by TorchRay's own recipe with torch.manual_seed(0)) are
saved too, so that the Rust side builds the same masks; and Captum's occlusion (window 56,
stride 28) and integrated gradients (8 Gauss-Legendre points). Excitation backprop and its
contrastive variant go to their own fixture (`--ebp-only` makes only that one).

    cargo run --release --example random_weights -- resnet50 7 224 224 target/golden/resnet50.safetensors
    python3 scripts/attr_golden.py
"""
import math
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torchray.attribution.deconvnet import deconvnet
from torchray.attribution.grad_cam import grad_cam
from torchray.attribution.gradient import gradient
from torchray.attribution.guided_backprop import guided_backprop
from torchray.attribution.linear_approx import linear_approx
from torchray.attribution.rise import rise, _upsample_reflect

OUT = "tests/fixtures/attr_resnet50.safetensors"


def rise_grids(n, size, cells=7, p=0.5, seed=0):
    """TorchRay's mask recipe, keeping the grids and shifts it draws."""
    torch.manual_seed(seed)
    h, w = size
    cell = (math.ceil(h / cells), math.ceil(w / cells))
    up = (h + cell[0], w + cell[1])
    grid = (torch.rand(n, 1, cells, cells) < p).float()
    sx = torch.randint(0, cell[0], (n,))
    sy = torch.randint(0, cell[1], (n,))
    masks_up = _upsample_reflect(grid, up)
    masks = torch.stack([masks_up[i, :, sx[i]:sx[i] + h, sy[i]:sy[i] + w] for i in range(n)])
    return grid[:, 0], torch.stack([sx, sy], 1), masks


class Lite0(torch.nn.Module):
    """EfficientNet-Lite0 (scripts/golden.py) with a `layer4` module at `_head_act`."""

    def __init__(self, sd):
        super().__init__()
        self.sd = sd
        self.layer4 = torch.nn.Identity()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return golden.lite0(self.sd, x, head=self.layer4)


def methods(net, x, target, out, prefix=""):
    """TorchRay's gradient, Grad-CAM, linear approximation and RISE; Captum's occlusion and
    integrated gradients; into `out` under `prefix`."""
    out[prefix + "gradient"] = gradient(net, x, target)
    out[prefix + "grad_cam"] = grad_cam(net, x, target, saliency_layer="layer4")
    out[prefix + "linear_approx"] = linear_approx(net, x, target, saliency_layer="layer4")
    grids, shifts, masks = rise_grids(64, x.shape[2:])
    out[prefix + "rise_grids"] = grids
    out[prefix + "rise_shifts"] = shifts.to(torch.int64)
    with torch.no_grad():
        sal = rise(net, x, filter_masks=masks, num_masks=len(masks), batch_size=32)
    out[prefix + "rise"] = sal[:, target:target + 1]
    from captum.attr import IntegratedGradients, Occlusion
    occ = Occlusion(net).attribute(x, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28),
                                   baselines=0, target=target)
    out[prefix + "occlusion"] = occ.mean(1, keepdim=True).detach()
    ig = IntegratedGradients(net).attribute(x, baselines=0, target=target, n_steps=8,
                                            method="gausslegendre", internal_batch_size=8)
    out[prefix + "integrated_gradients"] = ig.sum(1, keepdim=True).detach()


def lite0_goldens():
    import glob
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    global golden
    import golden
    torch.set_grad_enabled(True)  # golden.py turns gradients off on import
    path = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth"))[0]
    net = Lite0(torch.load(path, map_location="cpu")).eval()
    x = golden.lite0_input("chelsea")
    out = {"input": x.contiguous()}
    methods(net, x, 285, out)
    save_file({k: v.contiguous() for k, v in out.items()}, "tests/fixtures/attr_lite0.safetensors")
    print("lite0:", ", ".join(out))


def ebp_goldens(net, x, target):
    """TorchRay's excitation backprop and contrastive excitation backprop on ResNet-50, with
    its benchmark's settings (skip connections as EltwiseSum, saliency layer `layer3`,
    contrast layer `avgpool`), into their own fixture."""
    import copy
    from torchray.attribution.excitation_backprop import (
        contrastive_excitation_backprop, excitation_backprop, update_resnet)
    net = update_resnet(copy.deepcopy(net)).eval()
    out = {"target": torch.tensor([target], dtype=torch.int64)}
    out["excitation_backprop"] = excitation_backprop(net, x, target, saliency_layer="layer3")
    out["contrastive_excitation_backprop"] = contrastive_excitation_backprop(
        net, x, target, saliency_layer="layer3", contrast_layer="avgpool")
    # The same at `layer2`, where the signal has crossed more blocks.
    out["excitation_backprop_layer2"] = excitation_backprop(net, x, target, saliency_layer="layer2")
    save_file({k: v.detach().contiguous() for k, v in out.items()},
              "tests/fixtures/attr_resnet50_ebp.safetensors")
    for k, v in out.items():
        print(k, tuple(v.shape))


def main():
    sd = load_file("target/golden/resnet50.safetensors")
    x = sd.pop("__input__")
    net = torchvision.models.resnet50(weights=None)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not [m for m in missing if not m.endswith("num_batches_tracked")] and not unexpected
    net.eval()
    with torch.no_grad():
        target = int(net(x).argmax())
    ebp_goldens(net, x, target)
    if "--ebp-only" in sys.argv:
        return
    out = {"target": torch.tensor([target], dtype=torch.int64)}
    out["gradient"] = gradient(net, x, target)
    out["deconvnet"] = deconvnet(net, x, target)
    out["guided_backprop"] = guided_backprop(net, x, target)
    out["grad_cam"] = grad_cam(net, x, target, saliency_layer="layer4")
    out["linear_approx"] = linear_approx(net, x, target, saliency_layer="layer4")
    grids, shifts, masks = rise_grids(64, x.shape[2:])
    out["rise_grids"] = grids
    out["rise_shifts"] = shifts.to(torch.int64)
    out["rise_mask0"] = masks[0]
    with torch.no_grad():
        sal = rise(net, x, filter_masks=masks, num_masks=len(masks), batch_size=32)
    out["rise"] = sal[:, target:target + 1]
    # Captum: occlusion (window 56, stride 28, baseline 0) and integrated gradients (8
    # Gauss-Legendre points, black baseline), on the logit of the target.
    from captum.attr import IntegratedGradients, Occlusion
    occ = Occlusion(net).attribute(x, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28),
                                   baselines=0, target=target)
    out["occlusion"] = occ.mean(1, keepdim=True).detach()
    ig = IntegratedGradients(net).attribute(x, baselines=0, target=target, n_steps=8,
                                            method="gausslegendre", internal_batch_size=8)
    out["integrated_gradients"] = ig.sum(1, keepdim=True).detach()
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    for k, v in out.items():
        print(k, tuple(v.shape))


if __name__ == "__main__":
    main()
    if "--ebp-only" not in sys.argv:
        lite0_goldens()
