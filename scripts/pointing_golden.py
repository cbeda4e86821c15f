#!/usr/bin/env python3
"""Pointing-game fixtures for `tests/evaluate.rs`: two tiny datasets, one in VOC layout and one
in COCO layout, made from the bundled images, and TorchRay's verdicts on them.

Development-time only (needs torch, torchvision, torchray, pycocotools, Pillow). Writes

    tests/fixtures/voc-mini/   Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/test.txt,
                               difficult.txt (flags in the excitation-backprop benchmark's format)
    tests/fixtures/coco-mini/  annotations/instances_val2014.json (polygons, a plain and a
                               compressed run-length mask, all 80 categories), val2014/*.jpg,
                               difficult.txt
    tests/fixtures/pointing_golden.json

The datasets hold hit and miss cases for a point at the image centre, a box exactly 15 px from
it (a miss: TorchRay's test is d^2 < 15^2) and one 14 px from it, a class whose boxes are all
`difficult`, and images with several classes. For every (image, class) pair and a set of probe
points, the golden file holds TorchRay's `PointingGameBenchmark.evaluate` verdict (+1 hit,
-1 miss, 0 skipped), without and with the difficult subset, and the class-averaged accuracy
of the centre point over each dataset, as TorchRay aggregates it.

    python3 scripts/pointing_golden.py
"""
import json
import os
import random

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as cocomask
from torchray.benchmark import datasets as ads
from torchray.benchmark.pointing_game import PointingGameBenchmark
from torchvision import datasets as tvds

ROOT = "tests/fixtures"
VOC = os.path.join(ROOT, "voc-mini")
COCO = os.path.join(ROOT, "coco-mini")


def image(src, size, path, flip=False):
    im = Image.open(src).convert("RGB").resize(size, Image.BICUBIC)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, quality=85)


# VOC: (name, source, (w, h), flip, [(class, difficult, (xmin, ymin, xmax, ymax) 1-based)]).
VOC_IMAGES = [
    ("000001", "assets/chelsea.png", (300, 200), False, [
        ("cat", 0, (80, 30, 250, 190)),      # holds the centre (150, 100): hit
        ("dog", 0, (1, 1, 40, 40)),          # far: miss
        ("dog", 0, (260, 150, 300, 200)),    # a second dog box, also far
    ]),
    ("000002", "assets/coffee.png", (240, 180), False, [
        ("diningtable", 0, (1, 121, 240, 180)),  # 30 px below the centre (120, 90): miss
        ("bottle", 1, (100, 60, 140, 120)),      # only difficult boxes: skipped
        ("chair", 0, (136, 40, 200, 140)),       # 0-based xmin 135: exactly 15 px: miss
        ("sofa", 0, (135, 40, 200, 140)),        # 0-based xmin 134: 14 px: hit
    ]),
    ("000003", "assets/chelsea.png", (200, 200), True, [
        ("cat", 0, (30, 20, 170, 200)),
        ("person", 1, (1, 1, 60, 60)),
        ("person", 0, (150, 150, 200, 200)),    # one of two boxes difficult: scored, miss
    ]),
]
# Difficult subset: per image, one flag per class (image 000003 unlisted: all scored).
VOC_FLAGS = {"000001": ["cat"], "000002": ["diningtable", "chair", "bottle"]}


def write_voc():
    os.makedirs(os.path.join(VOC, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(VOC, "ImageSets", "Main"), exist_ok=True)
    for name, src, (w, h), flip, objs in VOC_IMAGES:
        image(src, (w, h), os.path.join(VOC, "JPEGImages", name + ".jpg"), flip)
        xml = [f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{name}.jpg</filename>",
               f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n  </size>"]
        for cls, diff, (x0, y0, x1, y1) in objs:
            xml.append(f"  <object>\n    <name>{cls}</name>\n    <pose>Unspecified</pose>\n"
                       f"    <truncated>0</truncated>\n    <difficult>{diff}</difficult>\n"
                       f"    <bndbox>\n      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n"
                       f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>")
        xml.append("</annotation>\n")
        with open(os.path.join(VOC, "Annotations", name + ".xml"), "w") as f:
            f.write("\n".join(xml))
    with open(os.path.join(VOC, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("".join(n + "\n" for n, *_ in VOC_IMAGES))
    with open(os.path.join(VOC, "difficult.txt"), "w") as f:
        for name, classes in VOC_FLAGS.items():
            flags = ["1" if c in classes else "0" for c in ads.VOC_CLASSES]
            f.write(name + "\t" + "\t".join(flags) + "\n")


COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
            50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
            75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def write_coco():
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, ads.COCO_CLASSES)]
    cid = {n: i for i, n in zip(COCO_IDS, ads.COCO_CLASSES)}
    images, anns = [], []

    def add(ann_id, image_id, cat, seg, w, h):
        if isinstance(seg, np.ndarray):  # a binary mask: run-length encode it
            rle = cocomask.encode(np.asfortranarray(seg.astype(np.uint8)))
            seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        elif isinstance(seg, dict):
            pass
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cid[cat],
                     "segmentation": seg, "iscrowd": int(isinstance(seg, dict)),
                     "area": 1.0, "bbox": [0, 0, 1, 1]})

    # Image 1: chelsea 300x200; a cat polygon around the centre, a dog as a plain (list)
    # run-length mask in the top-left corner, a bowl polygon far right.
    images.append({"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "width": 300, "height": 200})
    image("assets/chelsea.png", (300, 200), os.path.join(COCO, "val2014", images[-1]["file_name"]))
    add(1, 1, "cat", [[90.5, 40.0, 230.0, 35.5, 245.0, 180.0, 100.0, 190.0]], 300, 200)
    dog = np.zeros((200, 300), dtype=bool)
    dog[5:40, 10:50] = True
    counts, prev, run = [], False, 0
    for v in dog.flatten(order="F"):
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    add(2, 1, "dog", {"size": [200, 300], "counts": counts}, 300, 200)
    add(3, 1, "bowl", [[270.0, 10.0, 299.0, 10.0, 299.0, 60.0, 270.0, 60.0]], 300, 200)
    # Image 2: coffee 240x180; a cup polygon 14 px right of the centre (120, 90) (hit), a
    # dining table as a compressed run-length mask below it (miss), two cup polygons.
    images.append({"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "width": 240, "height": 180})
    image("assets/coffee.png", (240, 180), os.path.join(COCO, "val2014", images[-1]["file_name"]))
    add(4, 2, "cup", [[134.0, 50.0, 200.0, 50.0, 200.0, 130.0, 134.0, 130.0]], 240, 180)
    table = np.zeros((180, 240), dtype=bool)
    table[125:, :] = True
    add(5, 2, "diningtable", table, 240, 180)
    add(6, 2, "cup", [[5.0, 5.0, 30.0, 5.0, 17.0, 30.0]], 240, 180)
    # Image 3: no annotations (left out, as TorchRay's COCO dataset does).
    images.append({"id": 3, "file_name": "COCO_val2014_000000000003.jpg", "width": 160, "height": 120})
    image("assets/coffee.png", (160, 120), os.path.join(COCO, "val2014", images[-1]["file_name"]), True)
    os.makedirs(os.path.join(COCO, "annotations"), exist_ok=True)
    with open(os.path.join(COCO, "annotations", "instances_val2014.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    with open(os.path.join(COCO, "difficult.txt"), "w") as f:
        flags = ["1" if n in ("cat", "bowl") else "0" for n in ads.COCO_CLASSES]
        f.write("COCO_val2014_000000000001\t" + "\t".join(flags) + "\n")


def flags_of(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path)]
    return {r[0]: [bool(int(x)) for x in r[1:]] for r in rows}


def voc_labels():
    """The labels as torchvision's VOCDetection parses them (its constructor no longer accepts
    TorchRay's arguments, so the dataset object is made without it)."""
    import xml.etree.ElementTree as ET
    dataset = tvds.VOCDetection.__new__(tvds.VOCDetection)
    labels = [dataset.parse_voc_xml(ET.parse(os.path.join(VOC, "Annotations", n + ".xml")).getroot())
              for n, *_ in VOC_IMAGES]
    return dataset, labels, ads.voc_as_class_ids, ads.voc_as_image_size, ads.voc_as_image_name


def coco_labels():
    dataset = ads.CocoDetection(os.path.join(COCO, "val2014"),
                                os.path.join(COCO, "annotations", "instances_val2014.json"))
    labels = [dataset[i][1] for i in range(len(dataset))]
    return (dataset, labels, ads.coco_as_class_ids, lambda l: ads.coco_as_image_size(dataset, l),
            lambda l: ads.coco_as_image_name(dataset, l))


def verdicts(source, fmt, flags_path):
    dataset, labels, class_ids, image_size, image_name = source
    plain = PointingGameBenchmark(dataset, difficult=False)
    hard = PointingGameBenchmark(dataset, difficult=False)
    hard.difficult = True
    hard.difficult_flags = flags_of(flags_path)
    rng = random.Random(0)
    out = []
    for label in labels:
        if not class_ids(label):
            continue
        w, h = image_size(label)
        name = image_name(label)
        for c in sorted(class_ids(label)):
            centre = (w // 2, h // 2)
            probes = [centre] + [(rng.randrange(w), rng.randrange(h)) for _ in range(12)]
            for k, p in enumerate(probes):
                a = plain.evaluate(label, c, torch.tensor(p))
                b = hard.evaluate(label, c, torch.tensor(p))
                out.append({"format": fmt, "image": name, "class": c, "point": list(p),
                            "hit": a, "hit_difficult": b})
                if k == 0:
                    plain.aggregate(a, c)
                    hard.aggregate(b, c)
    return out, {"accuracy": float(plain.accuracy), "accuracy_difficult": float(hard.accuracy)}


def main():
    write_voc()
    write_coco()
    v, vacc = verdicts(voc_labels(), "voc", os.path.join(VOC, "difficult.txt"))
    c, cacc = verdicts(coco_labels(), "coco", os.path.join(COCO, "difficult.txt"))
    with open(os.path.join(ROOT, "pointing_golden.json"), "w") as f:
        json.dump({"probes": v + c, "centre": {"voc": vacc, "coco": cacc}}, f, indent=0)
    print("probes:", len(v), "voc,", len(c), "coco; centre accuracy:", vacc, cacc)


if __name__ == "__main__":
    main()
