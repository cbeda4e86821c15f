#!/usr/bin/env python3
"""Side-by-side timing for the channels issue: `extremal channels --model resnet50 --layer layer4
--keep 25` (prefix computed once, only the suffix re-run) against the usual PyTorch way, a
forward hook masking `layer4` and the whole network re-run for each of the paper's 300
iterations. Same random weights, same input tensor, one run. Development time only (needs
torch, torchvision, safetensors).

    cargo build --release
    cargo build --release --example random_weights
    python3 scripts/channels_speed.py
"""
import json
import os
import subprocess
import time

import torch
import torchvision
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
os.makedirs("target/speed", exist_ok=True)
src = "target/speed/resnet50-all.safetensors"
subprocess.run(["target/release/examples/random_weights", "resnet50", "7", "224", "224", src], check=True)
sd = load_file(src)
x = sd.pop("__input__")
save_file(sd, "target/speed/resnet50.safetensors")
save_file({"input": x}, "target/speed/input.safetensors")

def keep_score(net, mask, x, target):
    """Target logit with exactly the top-25 channels of the mask at layer4."""
    top = mask.detach().flatten().argsort(descending=True)[:25]
    hard = torch.zeros(1, 2048, 1, 1)
    hard[0, top] = 1
    h = net.layer4.register_forward_hook(lambda m, i, o: o * hard)
    y = net(x)[0, target].item()
    h.remove()
    return y


net_plain = torchvision.models.resnet50(weights=None)
net_plain.load_state_dict(sd, strict=False)
net_plain.eval()

# PyTorch: hook on layer4, full network each iteration (the paper's schedule).
net = torchvision.models.resnet50(weights=None)
net.load_state_dict(sd, strict=False)
net.eval()
for p in net.parameters():
    p.requires_grad_(False)
target = net(x).argmax().item()
mask = torch.ones(1, 2048, 1, 1, requires_grad=True)
net.layer4.register_forward_hook(lambda m, i, o: o * mask)
opt = torch.optim.SGD([mask], lr=0.01, momentum=0.9)
keep, n = 25, 2048
ref = torch.cat([torch.zeros(n - keep), torch.ones(keep)])
t0 = time.time()
for t in range(300):
    lam = 1500 * min(t / 150, 1.0)
    y = net(x)[0, target]
    area = ((mask.flatten().sort()[0] - ref) ** 2).mean()
    loss = -y + lam * area
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        mask.clamp_(0, 1)
torch_s = time.time() - t0

t0 = time.time()
out = subprocess.run(
    ["target/release/extremal", "channels", "--model", "resnet50", "--weights", "target/speed/resnet50.safetensors",
     "target/speed/input.safetensors", "--layer", "layer4", "--keep", "25", "--json"],
    check=True, capture_output=True, text=True)
command_s = time.time() - t0
r = json.loads(out.stdout)
# The same work as the PyTorch loop above (model already loaded): prefix, optimisation, refinement.
out = subprocess.run(
    ["target/release/examples/channels_speed", "resnet50", "target/speed/resnet50.safetensors",
     "target/speed/input.safetensors", "layer4", "25"], check=True, capture_output=True, text=True)
ours_s = json.loads(out.stdout)["seconds"]
print(f"PyTorch, forward hook + whole network, 300 iterations (model loaded): {torch_s:.2f} s, "
      f"final mask top-25 kept score {keep_score(net_plain, mask, x, target):.1f}")
print(f"extremal channel_masks (model loaded): {ours_s:.2f} s; whole `extremal channels` command with model "
      f"loading: {command_s:.2f} s; kept score {r['kept_score']:.1f} (original {r['original_score']:.1f})")
print(f"ratio: {torch_s / ours_s:.1f}x (whole command: {torch_s / command_s:.1f}x)")
