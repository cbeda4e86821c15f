#!/usr/bin/env python3
"""Development-time golden fixture: the order PyTorch's CPU `sort` gives to tied values.

TorchRay's area constraint sorts the masks with `Tensor.sort(dim=1)` (stable = False), and its
gradient reaches the values through their rank, so among ties it follows PyTorch's tie order,
which is neither the index order nor random (libstdc++'s introsort). `extremal_mask::sort`
replays it; this script records PyTorch's order on tie-laden inputs, among them TorchRay's own
masks (all parameters at 1, as at the first iteration; and clamped random parameters).

Needs torch, torchray and safetensors. Run from the repository root:

    python3 scripts/sort_golden.py

Writes tests/fixtures/torch_sort.safetensors: per case `<case>.values` (f32) and
`<case>.order` (i32, the indices `sort` returns).
"""
import torch
from safetensors.torch import save_file
from torchray.attribution.extremal_perturbation import MaskGenerator


def main():
    g = torch.Generator().manual_seed(0)
    cases = {
        "ones": torch.ones(5000),
        "levels": (torch.rand(3000, generator=g) * 5).floor() / 4,
        "small17": (torch.rand(17, generator=g) * 3).floor(),
        "small33": (torch.rand(33, generator=g) * 3).floor(),
        "small100": (torch.rand(100, generator=g) * 3).floor(),
        "sorted_ties": torch.arange(2000).div(7, rounding_mode="floor").float(),
        "reversed_ties": torch.arange(2000).div(7, rounding_mode="floor").float().flip(0),
    }
    gen = MaskGenerator((224, 224), 7, 21)
    params = torch.ones(1, 1, *gen.shape_in)
    cases["mask_ones"] = gen.generate(params)[1].flatten()
    params = (torch.randn(1, 1, *gen.shape_in, generator=g) * 2).clamp(0, 1)
    cases["mask_clamped"] = gen.generate(params)[1].flatten()
    out = {}
    for name, v in cases.items():
        v = v.float().contiguous()
        out[f"{name}.values"] = v
        out[f"{name}.order"] = v.sort()[1].int().contiguous()
        stable = (v.sort(stable=True)[1].int() == out[f"{name}.order"]).all().item()
        print(f"{name}: n = {v.numel()}, {v.unique().numel()} distinct values, "
              f"same as a stable sort: {stable}")
    save_file(out, "tests/fixtures/torch_sort.safetensors")


if __name__ == "__main__":
    main()
