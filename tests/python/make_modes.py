"""Writes one picture in many encodings, and PIL's RGB reading of each, for decode tests.

Usage: make_modes.py OUTDIR -- writes NAME.{png,jpg,gif} and NAME.ref.png (8-bit RGB, upright).
"""
import os
import sys

import numpy as np
from PIL import Image, ImageOps

out = sys.argv[1]
h, w = 48, 64
y, x = np.mgrid[0:h, 0:w]
rgb = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
base = Image.fromarray(rgb, "RGB")


def save(name, img, ext, reference, **kw):
    img.save(os.path.join(out, f"{name}.{ext}"), **kw)
    reference.convert("RGB").save(os.path.join(out, f"{name}.ref.png"))


save("rgb", base, "png", base)
gray = base.convert("L")
save("gray", gray, "png", gray)
save("rgba", base.convert("RGBA"), "png", base)
la = gray.convert("LA")
save("la", la, "png", gray)
pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
save("palette", pal, "png", pal)
save("palette_gif", pal, "gif", pal)
# 16-bit grayscale (Pillow's mode I;16) scaled from 8 bits: Pillow's convert("RGB") clips it to
# 0-255, so it comes out almost white; the reference is Pillow's own reading.
gray16_path = os.path.join(out, "gray16.png")
Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(gray16_path)
Image.open(gray16_path).convert("RGB").save(os.path.join(out, "gray16.ref.png"))
# CMYK JPEG; the reference is PIL's own decode and conversion.
cmyk_path = os.path.join(out, "cmyk.jpg")
base.convert("CMYK").save(cmyk_path, quality=95)
Image.open(cmyk_path).convert("RGB").save(os.path.join(out, "cmyk.ref.png"))
# EXIF orientation 6 (rotate 90° clockwise to view): the stored pixels are the upright picture
# rotated the other way; the reference is the upright picture as PIL decodes it.
exif = Image.Exif()
exif[0x0112] = 6
rot_path = os.path.join(out, "exif_rotated.jpg")
base.transpose(Image.Transpose.ROTATE_90).save(rot_path, quality=95, exif=exif)
ImageOps.exif_transpose(Image.open(rot_path)).convert("RGB").save(os.path.join(out, "exif_rotated.ref.png"))
plain_path = os.path.join(out, "plain.jpg")
base.save(plain_path, quality=95)
Image.open(plain_path).convert("RGB").save(os.path.join(out, "plain.ref.png"))
