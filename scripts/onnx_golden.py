#!/usr/bin/env python3
"""Development-time ONNX fixtures: four small seeded CNNs exported by both of PyTorch's ONNX
exporters, with PyTorch's outputs to compare against.

Needs torch, onnx, onnxscript, safetensors (not needed by CI). Run from the repository root:

    python3 scripts/onnx_golden.py

Writes tests/fixtures/onnx/<model>_<exporter>.onnx (and external/residual.onnx, the residual net
with its weights as ONNX external data) (exporter `ts`: TorchScript, opset 17, dynamic
batch; `dynamo`: torch.export, the default since PyTorch 2.9, static batch 1) and
tests/fixtures/onnx/<model>.safetensors holding, for the input `x` (1x3x32x32):
`logits`, `activation` (the output of the module named in the metadata key `site`),
`input_grad` (d logits[0, target] / dx, target in `target`), and `replaced` (the logits when a
forward hook replaces the output of module `replace` by 0.5 * output + 0.25).
"""
import json
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
OUT = "tests/fixtures/onnx"


def randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


# --- a residual net: stem, max-pool (ceil mode, padding), basic blocks, global pooling ---
class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        # TorchRay's excitation backprop needs the residual sum as a module (its EltwiseSum).
        self.skip = None

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return self.relu(y + s if self.skip is None else self.skip(y, s))


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, 2, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- a MobileNetV3-style stack: depthwise convolutions, squeeze-excitation, hard-swish ---
class SqueezeExcite(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_mid, c_out, k, stride, se):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(c_mid, c_mid, k, stride, k // 2, groups=c_mid, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU6()
        )
        self.se = SqueezeExcite(c_mid, 4) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(c_mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(8, 16, 8, 3, 1, True), InvertedResidual(8, 24, 12, 5, 2, True), InvertedResidual(12, 24, 12, 3, 1, False)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.head(x.flatten(1))


# --- an inception-style block: parallel branches, concatenation, average pooling ---
class Mixed(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.branch1x1 = nn.Conv2d(c, 6, 1)
        self.branch3x3 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.LeakyReLU(0.1), nn.Conv2d(4, 6, 3, padding=2, dilation=2))
        self.branch5x5 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.Tanh(), nn.Conv2d(4, 4, (5, 5), padding=2))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(c, 4, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


class InceptionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU6(), nn.MaxPool2d(2, 2))
        self.mixed = Mixed(8)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(4, 4)
        self.sig = nn.Sigmoid()
        self.fc = nn.Linear(20 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(self.act(self.mixed(self.stem(x))))
        x = x * self.sig(x)
        return self.fc(torch.flatten(x, 1))


# --- a ConvNeXt-style block: depthwise 7x7, channels-last LayerNorm, GELU MLP, layer scale ---
class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNeXtStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stages = nn.Sequential(nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16)))
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean((-2, -1))))


# --- the remaining operators: slicing with steps, split, pads, transposed convolution,
# softmax, squeeze/unsqueeze, expand, asymmetric "same" padding, global max pooling ---
class Odds(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, 2, padding=0)
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.mix = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.norm = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 + 6 + 3, 10)

    def forward(self, x):
        y = self.conv(F.pad(x, (1, 2, 1, 2)))               # asymmetric pads, as TF "SAME"
        y = self.up(F.relu(y))                               # transposed convolution
        a, b = torch.split(y, [2, 4], dim=1)                 # split
        y = torch.cat([b, a * torch.sigmoid(a)[:, :1]], 1)   # broadcast over channels
        y = self.norm(self.mix(y))                           # a batch norm after a grouped conv
        y = F.pad(y, (1, 1, 0, 0), mode="replicate")        # edge padding
        y = y[:, :, 1:-1:2, ::2]                             # slices with steps
        att = torch.softmax(y.flatten(2), dim=-1).view_as(y)  # softmax over positions
        pooled = (y * att).sum((2, 3))                        # attention pooling
        peak = F.adaptive_max_pool2d(y, 1).squeeze(-1).squeeze(-1)
        colour = x.mean((2, 3)).unsqueeze(1).expand(-1, 2, -1)[:, 0]
        return self.fc(torch.cat([pooled, peak, colour], 1))


MODELS = {
    # name: (class, site to read, module whose output is replaced)
    "residual": (ResidualNet, "layer2", "layer1"),
    "mobilenet": (MobileNetStyle, "blocks.1.se", "blocks.0"),
    "inception": (InceptionStyle, "mixed", "mixed.branch3x3"),
    "convnext": (ConvNeXtStyle, "stages.0.1", "stages.0.0"),
    "odds": (Odds, "up", "conv"),
}


def torchray_maps(model, x, target):
    """TorchRay's guided backprop, deconvnet, excitation backprop (at `layer1` and `layer2`)
    and contrastive excitation backprop (`layer1`, contrast at `avgpool`) of the residual net."""
    import copy
    from torchray.attribution.deconvnet import deconvnet
    from torchray.attribution.excitation_backprop import (
        EltwiseSum, contrastive_excitation_backprop, excitation_backprop)
    from torchray.attribution.guided_backprop import guided_backprop
    out = {"guided_backprop": guided_backprop(model, x, target), "deconvnet": deconvnet(model, x, target)}
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, Block):
            m.skip = EltwiseSum()
    out["excitation_backprop_layer1"] = excitation_backprop(net, x, target, saliency_layer="layer1")
    out["excitation_backprop_layer2"] = excitation_backprop(net, x, target, saliency_layer="layer2")
    out["contrastive_excitation_backprop"] = contrastive_excitation_backprop(
        net, x, target, saliency_layer="layer1", contrast_layer="avgpool")
    return {k: v.detach().contiguous() for k, v in out.items()}


def main():
    os.makedirs(OUT, exist_ok=True)
    only = sys.argv[1:]
    for seed, (name, (cls, site, replace)) in enumerate(MODELS.items()):
        if only and name not in only:
            continue
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(100 + seed)
        model = cls()
        randomise_bn(model, gen)
        model.eval()
        x = torch.randn(1, 3, 32, 32, generator=gen)
        modules = dict(model.named_modules())

        acts = {}
        h = modules[site].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach().clone()))
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        h.remove()
        target = int(logits[0].argmax())
        logits[0, target].backward()
        with torch.no_grad():
            h = modules[replace].register_forward_hook(lambda m, i, o: 0.5 * o + 0.25)
            replaced = model(x)
            h.remove()

        for exporter in ["ts", "dynamo"]:
            path = f"{OUT}/{name}_{exporter}.onnx"
            if exporter == "ts":
                torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            else:
                torch.onnx.export(model, (x,), path, dynamo=True, external_data=False)
            print(f"{path}: {os.path.getsize(path)} bytes")
        if name == "residual":
            # The weights as ONNX external data, in a file beside the model.
            path = f"{OUT}/external/residual.onnx"
            os.makedirs(f"{OUT}/external", exist_ok=True)
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=True)
            print(f"{path}: {os.path.getsize(path)} bytes, {os.listdir(f'{OUT}/external')}")
        out = {"x": x, "logits": logits.detach(), "activation": acts["a"].contiguous(), "input_grad": xg.grad,
               "replaced": replaced}
        if name == "residual":
            out.update(torchray_maps(model, x, target))
        save_file(
            out,
            f"{OUT}/{name}.safetensors",
            metadata={"site": site, "replace": replace, "target": str(target)},
        )
        print(name, "target", target, "max |logit|", float(logits.abs().max()))


if __name__ == "__main__":
    main()
