#!/usr/bin/env python3
"""Makes tests/fixtures/views/: 8 views of the bundled CC0 photographs (assets/chelsea.png,
assets/coffee.png — whole, mirrored, cropped), 224 pixels on the shorter side, as JPEGs. They
are the folder of the class-level channel runs in the tests and in tutorial 3 (derived from
CC0 images, so CC0 too).

    python3 scripts/views.py
"""
import os

from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "views")


def save(img, name):
    w, h = img.size
    s = 224 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.LANCZOS)
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, quality=90)


def views(src, prefix, crops):
    img = Image.open(os.path.join(ROOT, "assets", src)).convert("RGB")
    w, h = img.size
    save(img, f"{prefix}/whole.jpg")
    save(ImageOps.mirror(img), f"{prefix}/mirrored.jpg")
    for name, (l, t, r, b) in crops.items():
        save(img.crop((int(l * w), int(t * h), int(r * w), int(b * h))), f"{prefix}/{name}.jpg")


views("chelsea.png", "cat", {"left": (0.0, 0.0, 0.7, 1.0), "centre": (0.15, 0.1, 0.85, 0.9), "right": (0.3, 0.0, 1.0, 1.0)})
views("coffee.png", "cup", {"centre": (0.15, 0.1, 0.85, 0.9)})
