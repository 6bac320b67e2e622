"""Reference for the parity test: torchvision's eval transform on PIL-decoded images.

Usage: eval_transform.py OUT.f32 IMAGE... -- writes, for each image in order, the
3x224x224 float32 tensor of Resize(256) + CenterCrop(224) + ToTensor + Normalize.
"""
import sys

import numpy as np
from PIL import Image
from torchvision import transforms

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]

transform = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ]
)

out_path, paths = sys.argv[1], sys.argv[2:]
with open(out_path, "wb") as out:
    for path in paths:
        with Image.open(path) as img:
            tensor = transform(img.convert("RGB"))
        out.write(np.ascontiguousarray(tensor.numpy(), dtype="<f4").tobytes())
