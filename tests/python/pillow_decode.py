"""Pillow's decoding of image files, as torchvision's loaders see them: Image.open + convert("RGB").

Usage: pillow_decode.py OUTDIR FILE... -- writes OUTDIR/<file name>.rgb (raw 8-bit RGB rows) and
prints one JSON line per file: {"file", "mode", "width", "height", "truncated"}.

Files whose name says "truncated" (a JPEG cut short) are read with ImageFile.LOAD_TRUNCATED_IMAGES,
the setting data loaders use to accept such files: libjpeg then decodes what the file holds.
"""
import json
import os
import sys

import numpy as np
from PIL import Image, ImageFile

out = sys.argv[1]
for path in sys.argv[2:]:
    name = os.path.basename(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = "truncated" in name
    with Image.open(path) as im:
        mode = im.mode
        rgb = np.asarray(im.convert("RGB"))
    with open(os.path.join(out, name + ".rgb"), "wb") as f:
        f.write(np.ascontiguousarray(rgb).tobytes())
    print(json.dumps({"file": name, "mode": mode, "width": rgb.shape[1], "height": rgb.shape[0],
                      "truncated": ImageFile.LOAD_TRUNCATED_IMAGES}))
