#!/usr/bin/env python3
"""Development-time golden fixtures: PyTorch's outputs for the networks extremal implements.

Needs torch, torchvision, safetensors, pillow (not needed by CI). Run from the repository root:

    cargo build --release --example random_weights
    for m in resnet50:224:224 resnet18:224:298 vgg16:224:298 googlenet:224:298; do
      IFS=: read n h w <<< "$m"
      ./target/release/examples/random_weights $n 7 $h $w target/golden/$n.safetensors
    done
    python3 scripts/golden.py

Writes tests/fixtures/*.safetensors (outputs only; the random weights are regenerated from
their seed by the Rust tests).
"""
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
import numpy as np
from safetensors.torch import load_file, save_file

torch.set_grad_enabled(False)
OUT = "tests/fixtures"


def random_models():
    for name in ["resnet50", "resnet18", "vgg16", "googlenet"]:
        path = f"target/golden/{name}.safetensors"
        if not os.path.exists(path):
            print(f"skip {name}: {path} missing", file=sys.stderr)
            continue
        sd = load_file(path)
        x = sd.pop("__input__")
        if name == "googlenet":
            net = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False)
        else:
            net = getattr(torchvision.models, name)(weights=None)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.endswith("num_batches_tracked")]
        assert not missing and not unexpected, (missing, unexpected)
        net.eval()
        acts = {}
        if name == "resnet50":
            net.layer4.register_forward_hook(lambda m, i, o: acts.__setitem__("layer4", o))
        logits = net(x)
        out = {"logits": logits.contiguous()}
        out.update({k: v.contiguous() for k, v in acts.items()})
        save_file(out, f"{OUT}/{name}_random.safetensors")
        print(name, tuple(x.shape), "max |logit|", logits.abs().max().item())


# --- EfficientNet-Lite0, written from the architecture (TF SAME padding, ReLU6, BN eps 1e-3) ---
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def same_conv(x, w, stride, groups=1):
    ih, iw = x.shape[-2:]
    kh, kw = w.shape[-2:]
    ph = max((-(-ih // stride) - 1) * stride + kh - ih, 0)
    pw = max((-(-iw // stride) - 1) * stride + kw - iw, 0)
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, w, None, stride, 0, 1, groups)


def bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-3)


def lite0(sd, x, until=None, act=F.relu6, head=None):
    """Logits, or the activation at site `until` (`_blocks.<i>` or `_head_act`). `act` replaces
    the last ReLU6 before that site (the inversion comparison redirects its gradient)."""
    x = F.relu6(bn(same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    i = 0
    for reps, k, s, e, cin0, cout in STAGES:
        for r in range(reps):
            p = f"_blocks.{i}."
            cin, st = (cin0, s) if r == 0 else (cout, 1)
            inp = x
            if e != 1:
                x = F.relu6(bn(same_conv(x, sd[p + "_expand_conv.weight"], 1), sd, p + "_bn0"))
            mid = x.shape[1]
            last = act if until == f"_blocks.{i}" else F.relu6
            x = last(bn(same_conv(x, sd[p + "_depthwise_conv.weight"], st, mid), sd, p + "_bn1"))
            x = bn(same_conv(x, sd[p + "_project_conv.weight"], 1), sd, p + "_bn2")
            if st == 1 and cin == cout:
                x = x + inp
            if until == f"_blocks.{i}":
                return x
            i += 1
    x = act(bn(same_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    if head is not None:  # a module at `_head_act` (= layer4), for hooks
        x = head(x)
    if until == "_head_act":
        return x
    x = x.mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def lite0_input(img):
    """The Lite0 input tensor of assets/{img}.png: 224x224 bilinear, scaled to [-1, 1]."""
    rgb = np.asarray(Image.open(f"assets/{img}.png").convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    return (t - 0.5) / 0.5


def lite0_fixture():
    import glob
    cands = glob.glob(os.path.expanduser("~/.cache/extremal/efficientnet-lite0/*.pth")) + \
        glob.glob(os.environ.get("EXTREMAL_CACHE", "/nonexistent") + "/efficientnet-lite0/*.pth")
    if not cands:
        print("skip lite0: run `extremal classify assets/chelsea.png` once to fetch the weights", file=sys.stderr)
        return
    sd = torch.load(cands[0], map_location="cpu")
    out = {}
    for img in ["chelsea", "coffee"]:
        x = lite0_input(img)
        logits = lite0(sd, x)
        p = logits.softmax(-1)
        out[f"{img}_input"] = x.contiguous()
        out[f"{img}_logits"] = logits.contiguous()
        print(img, "top", p.argmax().item(), "p", p.max().item())
    save_file(out, f"{OUT}/lite0_real.safetensors")


def pth_fixtures():
    """Tiny checkpoints in both PyTorch formats, with a transposed (non-contiguous) tensor."""
    from collections import OrderedDict
    sd = OrderedDict(
        transposed=torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        double=torch.arange(6, dtype=torch.float64).reshape(2, 3) / 4,
        long=torch.tensor([1, -2, 3]),
        half=torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16),
        offset=torch.arange(10, dtype=torch.float32)[4:7],
    )
    torch.save(sd, f"{OUT}/tiny_zip.pth")
    torch.save(sd, f"{OUT}/tiny_legacy.pth", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    pth_fixtures()
    random_models()
    lite0_fixture()
