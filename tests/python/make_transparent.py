"""Writes images with transparency in each way Pillow knows it, and PIL's composite of each onto
a background colour, for the compositing parity test.

Usage: make_transparent.py OUTDIR RRGGBB -- writes NAME.EXT and NAME.ref.png, where the
reference is Image.alpha_composite(Image.new("RGBA", size, colour), img.convert("RGBA"))
converted to RGB: what `train --background #RRGGBB` promises the model sees.
"""
import os
import sys

import numpy as np
from PIL import Image

out, hexcolour = sys.argv[1], sys.argv[2]
colour = tuple(int(hexcolour[i : i + 2], 16) for i in (0, 2, 4))
h, w = 37, 53
y, x = np.mgrid[0:h, 0:w]
rgb = np.stack([(x * 4) % 256, (y * 6) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
# Every alpha level somewhere: a ramp, with fully transparent and fully opaque corners.
alpha = ((x * 5 + y * 3) % 256).astype(np.uint8)
alpha[:6, :6] = 0
alpha[-6:, -6:] = 255
rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def save(name, img, ext, **kw):
    path = os.path.join(out, f"{name}.{ext}")
    img.save(path, **kw)
    with Image.open(path) as im:
        background = Image.new("RGBA", im.size, colour + (255,))
        Image.alpha_composite(background, im.convert("RGBA")).convert("RGB").save(os.path.join(out, f"{name}.ref.png"))


save("rgba", rgba, "png")
save("la", rgba.convert("LA"), "png")
# A palette with one transparent entry (tRNS), and a GIF with a transparent index.
pal = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
mask = np.asarray(pal) == 3
save("palette_trns", pal, "png", transparency=3)
save("gif_transparent", pal, "gif", transparency=3)
# A colour key on an RGB image (tRNS holds one colour), and partial alpha in a palette (tRNS
# holds an alpha per entry).
key = Image.fromarray(rgb, "RGB")
save("rgb_colour_key", key, "png", transparency=tuple(int(v) for v in rgb[10, 10]))
save("palette_alpha", pal, "png", transparency=bytes(range(0, 256, 8)))
save("webp_alpha", rgba, "webp", lossless=True)
save("tga_rgba", rgba, "tga")
print(int(mask.sum()))
