"""Reference for the parity test: torchvision's eval transform on PIL-decoded images.

Usage: eval_transform.py OUT.f32 IMAGE... -- writes, for each image in order, the
3x224x224 float32 tensor of Resize(256) + CenterCrop(224) + ToTensor + Normalize.
"""
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from torchvision_reference import eval_transform  # noqa: E402

transform = eval_transform()

out_path, paths = sys.argv[1], sys.argv[2:]
with open(out_path, "wb") as out:
    for path in paths:
        with Image.open(path) as img:
            tensor = transform(img.convert("RGB"))
        out.write(np.ascontiguousarray(tensor.numpy(), dtype="<f4").tobytes())
