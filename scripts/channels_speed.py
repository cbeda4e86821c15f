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
ours_s = time.time() - t0
r = json.loads(out.stdout)
print(f"PyTorch, hook + full network x300 iterations: {torch_s:.2f} s")
print(f"extremal channels (whole command, model loading included): {ours_s:.2f} s, kept score {r['kept_score']:.1f} "
      f"(original {r['original_score']:.1f})")
print(f"ratio: {torch_s / ours_s:.1f}x")
