"""Pillow's decoding of image files, as torchvision's loaders see them: Image.open + convert("RGB").

Usage: pillow_decode.py OUTDIR FILE... -- writes OUTDIR/<file name>.rgb (raw 8-bit RGB rows) and
prints one JSON line per file: {"file", "mode", "width", "height"}.

16-bit greyscale ("I;16*") is the one exception: Pillow's convert("RGB") clips it to 255 (a
known Pillow limitation that would turn most such pictures white); the reference there is the
high byte of each sample, which is what Pillow does for 16-bit RGB and what the toolkit does.
"""
import json
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
for path in sys.argv[2:]:
    name = os.path.basename(path)
    with Image.open(path) as im:
        mode = im.mode
        if mode.startswith("I;16"):
            g = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            rgb = np.stack([g, g, g], axis=-1)
        else:
            rgb = np.asarray(im.convert("RGB"))
    with open(os.path.join(out, name + ".rgb"), "wb") as f:
        f.write(np.ascontiguousarray(rgb).tobytes())
    print(json.dumps({"file": name, "mode": mode, "width": rgb.shape[1], "height": rgb.shape[0]}))
