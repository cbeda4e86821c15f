#!/usr/bin/env python3
"""Development-time golden fixtures from TorchRay (PyPI `torchray`, CC-BY-NC: used as a
reference to measure against; none of its code is copied into extremal).

Needs torch, torchvision, torchray, safetensors, pillow and the EfficientNet-Lite0 weights in the
extremal cache (run `extremal classify assets/chelsea.png` once). Run from the repository root:

    python3 scripts/torchray_golden.py

Writes tests/fixtures/torchray.safetensors:
- blur and fade pyramids of a random 1x3x40x54 input (8 levels, max blur 20 and 5);
- the mask generator's full masks (step 7, sigma 21) for all-ones and random parameters at
  224x224 and random parameters at 224x298;
- the area penalty of random masks;
- one full step on EfficientNet-Lite0 with chelsea at 224x224 in f64 (areas 0.05/0.1/0.2,
  jitter flip, preserve, simple and contrastive rewards): the reward, the area term and the
  gradient of -energy with respect to the mask parameters.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from torchray.attribution.extremal_perturbation import MaskGenerator, Perturbation, simple_reward

sys.path.insert(0, os.path.dirname(__file__))
import golden  # noqa: E402

torch.set_grad_enabled(True)
OUT = "tests/fixtures"


def lite0_state():
    import glob
    cands = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth")) + \
        glob.glob(os.environ.get("EXTREMAL_CACHE", "/nonexistent") + "/efficientnet-lite0/*.pth")
    if not cands:
        sys.exit("run `extremal classify assets/chelsea.png` once to fetch the Lite0 weights")
    return torch.load(cands[0], map_location="cpu")


def main():
    g = torch.Generator().manual_seed(0)
    out = {}
    x = torch.randn(1, 3, 40, 54, generator=g)
    out["pyramid_input"] = x
    out["pyramid_blur20"] = Perturbation(x, num_levels=8, max_blur=20, type="blur").pyramid
    out["pyramid_blur5"] = Perturbation(x, num_levels=8, max_blur=5, type="blur").pyramid
    out["pyramid_fade"] = Perturbation(x, num_levels=8, type="fade").pyramid
    # Pyramid blending: a random mask, its output and the gradient of a random functional.
    per = Perturbation(x, num_levels=8, max_blur=20, type="blur")
    m = torch.rand(2, 1, 40, 54, generator=g)
    m[0, 0, :3, :3] = 1.0
    m[0, 0, 3:6, :3] = 0.0
    m.requires_grad_(True)
    y = per.apply(m)
    r = torch.randn(y.shape, generator=g)
    (y * r).sum().backward()
    out["apply_mask"], out["apply_output"], out["apply_weights"], out["apply_grad"] = m.detach(), y.detach(), r, m.grad

    for name, (h, w), k, rand in [("ones224", (224, 224), 1, False), ("rand224", (224, 224), 1, True),
                                  ("rand298", (224, 298), 1, True)]:
        gen = MaskGenerator((h, w), 7, 21)
        hi, wi = gen.shape_in
        p = torch.rand(k, 1, hi, wi, generator=g) if rand else torch.ones(k, 1, hi, wi)
        p.requires_grad_(True)
        cropped, full = gen.generate(p)
        r = torch.randn(full.shape, generator=g)
        (full * r).sum().backward()
        out[f"gen_{name}_params"] = p.detach()
        out[f"gen_{name}_full"] = full.detach().contiguous()
        out[f"gen_{name}_weights"] = r
        out[f"gen_{name}_grad"] = p.grad

    masks = torch.rand(2, 1000, generator=g)
    areas = [0.1, 0.3]
    ref = torch.ones(2, 1000)
    for i, a in enumerate(areas):
        ref[i, :int(1000 * (1 - a))] = 0
    out["area_masks"] = masks
    out["area_penalty"] = ((masks.sort(dim=1)[0] - ref) ** 2).mean(dim=1)

    # One full step (TorchRay's loop body, t = 0: jitter flips) on a smooth network, in f32:
    # logits = W · avgpool8x8(x) + b, so that the gradient has no kinks to flip.
    x = golden.lite0_input("chelsea")
    areas = [0.05, 0.1, 0.2]
    lw, lb = torch.randn(10, 192, generator=g) * 0.1, torch.randn(10, generator=g)
    lin = lambda t: torch.nn.functional.linear(torch.nn.functional.adaptive_avg_pool2d(t, 8).flatten(1), lw, lb)  # noqa: E731
    per = Perturbation(x, num_levels=8, max_blur=20, type="blur")
    gen = MaskGenerator(per.pyramid.shape[2:], 7, 21)
    hi, wi = gen.shape_in
    p = torch.rand(len(areas), 1, hi, wi, generator=g).requires_grad_(True)
    max_area = int(torch.tensor(gen.shape_out).prod())
    ref = torch.ones(len(areas), max_area)
    for i, a in enumerate(areas):
        ref[i, :int(max_area * (1 - a))] = 0
    mask_, mask = gen.generate(p)
    y = lin(torch.flip(per.apply(mask_), dims=(3,)))
    reward = simple_reward(y, 3, variant="preserve").reshape(len(areas), -1).mean(dim=1)
    regul = -((mask.reshape(len(areas), -1).sort(dim=1)[0] - ref) ** 2).mean(dim=1) * 300
    (-(reward + regul).sum()).backward()
    out.update({"linear_w": lw, "linear_b": lb, "linear_params": p.detach(), "linear_reward": reward.detach(),
                "linear_regul": regul.detach(), "linear_grad": p.grad})

    # One full step on EfficientNet-Lite0 (TorchRay's loop body, t = 0: jitter flips), in f64:
    # in f32, rounding differences of 1e-6 flip a few ReLU6 kinks and move the input gradient of
    # a piecewise-linear network by ~1 % at some pixels, on either side.
    sd = {k: v.double() for k, v in lite0_state().items()}
    net = lambda t: golden.lite0(sd, t)  # noqa: E731
    x = golden.lite0_input("chelsea")
    areas = [0.05, 0.1, 0.2]
    per = Perturbation(x, num_levels=8, max_blur=20, type="blur")  # imsmooth works in f32
    per.pyramid = per.pyramid.double()
    gen = MaskGenerator(per.pyramid.shape[2:], 7, 21)
    gen.weight = gen.weight.double()
    hi, wi = gen.shape_in
    p = torch.rand(len(areas), 1, hi, wi, generator=g).double()
    p.requires_grad_(True)
    max_area = int(torch.tensor(gen.shape_out).prod())
    ref = torch.ones(len(areas), max_area, dtype=torch.float64)
    for i, a in enumerate(areas):
        ref[i, :int(max_area * (1 - a))] = 0
    def contrastive(activation, target, variant):
        # TorchRay's contrastive_reward subtracts a (K, 1) max from a (K,) score, which
        # broadcasts to (K, K) and mixes the areas of a batch; this is its documented formula,
        # y_c - max_{c' != c} y_c' (with TorchRay's -100 floor), per area.
        temp = activation.clone()
        temp[:, target] = -100
        return activation[:, target] - temp.max(dim=1)[0]

    for reward_name, reward_func in [("simple", simple_reward), ("contrastive", contrastive)]:
        p.grad = None
        mask_, mask = gen.generate(p)
        xp = torch.flip(per.apply(mask_), dims=(3,))
        y = net(xp)
        reward = reward_func(y, 285, variant="preserve").reshape(len(areas), -1).mean(dim=1)
        regul = -((mask.reshape(len(areas), -1).sort(dim=1)[0] - ref) ** 2).mean(dim=1) * 300
        energy = (reward + regul).sum()
        (-energy).backward()
        out[f"step_{reward_name}_reward"] = reward.detach()
        out[f"step_{reward_name}_regul"] = regul.detach()
        out[f"step_{reward_name}_grad"] = p.grad.clone()
        print(reward_name, "reward", reward.tolist(), "regul", regul.tolist())
    out["step_params"] = p.detach()
    out["step_input"] = x
    save_file({k: v.contiguous().float() if not k.startswith("step_") else v.contiguous().double()
               for k, v in out.items()}, f"{OUT}/torchray.safetensors")
    print("wrote", f"{OUT}/torchray.safetensors")


if __name__ == "__main__":
    main()
