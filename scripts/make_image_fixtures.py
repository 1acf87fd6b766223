#!/usr/bin/env python3
"""Reference images for tests/test_image.c, from PIL and torchvision.

Writes into tests/fixtures/:
  image_ref.safetensors  U8 tensors, [H, W, C]:
    src.WxHxC                  two small sources, to check the test's copy of pattern()
    resize.WxHxC.OWxOH         PIL Image.resize((OW, OH), Image.BICUBIC)
    crop.WxHxC.S               torchvision Resize(S, BICUBIC) + CenterCrop(S)
    gray.WxH                   PIL convert("L") of the RGB source
    jpeg.NAME                  PIL's decode of image_NAME.jpg, after
                               ImageOps.exif_transpose (CMYK converted to RGB)
  image_NAME.jpg               small JPEGs written by PIL: gray, rgb (4:2:0),
                               progressive, cmyk (Adobe marker, inverted),
                               orient3 (EXIF big-endian), orient6 (EXIF
                               little-endian)

The source pattern is pattern(w, h, c) below; test_image.c computes the same
one, so only outputs are stored. Run with Debian's python3-pil (9.4) and
python3-torchvision (0.14):
  /usr/bin/python3 scripts/make_image_fixtures.py
"""
import io
import json
import os
import struct

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def pattern(w, h, c):
    """Diagonal ramps that wrap around (hard edges) plus 6 bits of hashed noise."""
    y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    x, y, ch = x.astype(np.uint64), y.astype(np.uint64), ch.astype(np.uint64)
    m = 0xFFFFFFFF
    v = (x * 0x9E3779B1 + y * 0x85EBCA77 + ch * 0xC2B2AE3D) & m
    v ^= v >> 15
    v = (v * 0x2C1B3C6D) & m
    v ^= v >> 12
    out = (x * 5 + y * 3 + ch * 80 + (v >> 26)) & 255
    return out.astype(np.uint8)


def pil(a):
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def arr(im):
    a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.uint8).tobytes()
        header[name] = {"dtype": "U8", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def exif_orientation(value, big_endian):
    """An APP1 Exif payload holding only IFD0 with the orientation tag."""
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", 0x0112, 3, 1, value, 0) + struct.pack(e + "I", 0)
    return b"Exif\x00\x00" + tiff


def jpegs(t):
    src = pattern(40, 24, 3)
    smooth = Image.fromarray(src).filter(ImageFilter.GaussianBlur(1.5))
    files = {
        "gray": (smooth.convert("L"), {}),
        "rgb": (smooth, {"subsampling": 2}),
        "progressive": (smooth, {"progressive": True}),
        "cmyk": (smooth.convert("CMYK"), {}),
        "orient3": (smooth, {"exif": exif_orientation(3, True)}),
        "orient6": (smooth, {"exif": exif_orientation(6, False)}),
    }
    for name, (im, opts) in files.items():
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90, **opts)
        with open(os.path.join(OUT, f"image_{name}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        dec = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
        if dec.mode == "CMYK":
            dec = dec.convert("RGB")
        t[f"jpeg.{name}"] = arr(dec)


def main():
    t = {}
    resizes = [((256, 256, 3), (64, 64)), ((100, 100, 3), (37, 37)), ((28, 28, 1), (64, 64)),
               ((120, 80, 3), (50, 30)), ((80, 120, 3), (33, 97)), ((100, 37, 1), (100, 20)),
               ((57, 40, 1), (23, 40)), ((7, 5, 3), (1, 1))]
    crops = [((120, 80, 3), 48), ((75, 131, 3), 32), ((74, 64, 3), 32), ((101, 100, 1), 50), ((28, 28, 1), 64)]
    for w, h, c in [(28, 28, 1), (7, 5, 3)]:  # to check that the test's pattern is this one
        t[f"src.{w}x{h}x{c}"] = pattern(w, h, c)
    for (w, h, c), (ow, oh) in resizes:
        t[f"resize.{w}x{h}x{c}.{ow}x{oh}"] = arr(pil(pattern(w, h, c)).resize((ow, oh), Image.BICUBIC))
    for (w, h, c), s in crops:
        tf = transforms.Compose([transforms.Resize(s, transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(s)])
        t[f"crop.{w}x{h}x{c}.{s}"] = arr(tf(pil(pattern(w, h, c))))
    t["gray.60x40"] = arr(pil(pattern(60, 40, 3)).convert("L"))
    jpegs(t)
    write_safetensors(os.path.join(OUT, "image_ref.safetensors"), t)


if __name__ == "__main__":
    main()
