#!/usr/bin/env python3
"""A long-tailed image folder from scikit-learn's digits (1797 8×8 scans, UCI): training classes
from --head images (digit 0) down to --head / --ratio (digit 9), geometrically; a balanced
validation folder of --val images per digit. Images are written as 32×32 PNGs (nearest
neighbour, grey levels 0..16 scaled to 0..255), for `train --image-size 32 --no-flip`.

Needs scikit-learn and Pillow (a temporary venv will do):
    python3 -m venv /tmp/d && /tmp/d/bin/pip install scikit-learn pillow
    /tmp/d/bin/python scripts/make_longtail_digits.py OUT [--head 120] [--ratio 10] [--val 30]
"""

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--head", type=int, default=120)
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--val", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    counts = {}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        n_train = max(1, round(args.head * args.ratio ** (-d / 9)))
        parts = {"val": idx[: args.val], "train": idx[args.val : args.val + n_train]}
        for split, rows in parts.items():
            folder = os.path.join(args.out, split, str(d))
            os.makedirs(folder, exist_ok=True)
            for i in rows:
                img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").convert("RGB")
                img.resize((32, 32), Image.NEAREST).save(os.path.join(folder, f"{i}.png"))
        counts[d] = len(parts["train"])
    print("train images per digit:", counts)


if __name__ == "__main__":
    main()
