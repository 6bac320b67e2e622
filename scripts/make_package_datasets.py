#!/usr/bin/env python3
"""Image folders from real data sets that Python packages ship (none of them made by us), for
scripts/bench_recipes_ablation.sh:

    OUT/digits/<digit>/*.png     scikit-learn's load_digits (UCI): 1797 8×8 grey scans of the
                                 ten digits, about 180 each; flat layout (`train` holds out
                                 --val-fraction of each class, seeded)
    OUT/lfw/{face,nonface}/*.png scikit-image's data.lfw_subset(): 100 25×25 grey faces (Labeled
                                 Faces in the Wild) and 100 non-face patches; flat layout
    OUT/longtail/{train,val}/... the long-tailed digits of scripts/make_longtail_digits.py
                                 (120 training images of digit 0 down to 12 of digit 9,
                                 a balanced validation folder of 30 per digit)

Digits are written at 32×32 (nearest neighbour, grey levels 0..16 scaled to 0..255) and the
faces at their 25×25, as RGB PNGs. Needs scikit-learn, scikit-image and Pillow (a temporary
venv will do):

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install scikit-learn scikit-image pillow
    /tmp/bench-venv/bin/python scripts/make_package_datasets.py OUT
"""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from skimage.data import lfw_subset


def save(img, path, size=None):
    im = Image.fromarray(img, "L").convert("RGB")
    if size:
        im = im.resize((size, size), Image.NEAREST)
    im.save(path)


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT")
    out = sys.argv[1]
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(out, "digits", str(label))
        os.makedirs(folder, exist_ok=True)
        save((img * 255 / 16).astype(np.uint8), os.path.join(folder, f"{i}.png"), 32)
    # lfw_subset(): the first 100 images are faces, the next 100 are not.
    faces = lfw_subset()
    for i, img in enumerate(faces):
        folder = os.path.join(out, "lfw", "face" if i < 100 else "nonface")
        os.makedirs(folder, exist_ok=True)
        save((img * 255).round().astype(np.uint8), os.path.join(folder, f"{i}.png"))
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "make_longtail_digits.py"), os.path.join(out, "longtail")],
                   check=True)
    for name in ["digits", "lfw"]:
        root = os.path.join(out, name)
        print(name, {c: len(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))})


if __name__ == "__main__":
    main()
