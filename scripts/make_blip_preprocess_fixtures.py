#!/usr/bin/env python3
"""Reference pixel values for tests/test_image_processor.c, from transformers' BLIP image processors.

Writes tests/fixtures/blip_preprocess/:
  IMAGE.png            small images made here: grad (RGB gradient, 41x29,
                       shrunk), noise (RGB noise, 13x17, enlarged), gray (8-bit
                       gray, 30x30), rgba (RGBA with varying alpha, 25x35),
                       square (RGB noise, 24x24: the size of `blip`)
  CONFIG.json          preprocessor_config.json files: blip (the layout of
                       Salesforce/blip-image-captioning-base's, size 24, keys
                       left to their defaults as it does), rect (20 high x 28
                       wide, rescale 1/128, no normalisation), plain (no resize,
                       no rescale, mean/std given as single numbers)
  pixels.safetensors   CONFIG.IMAGE      [H, W, 3] f32: BlipImageProcessorPil's
                                         pixel_values (the PIL backend), NHWC
                       resize.WxHxC.OWxOH  PIL's Image.resize((OW, OH), BICUBIC)
                                         of src.WxHxC (noise), on both sides of
                                         Pillow 13's pass order (vertical first
                                         when the height loses more than twice
                                         the pixels the width does)
                       crop.WxHxC.S      shorter side to S (PIL), centre S x S
                                         (torchvision's offsets), of src.WxHxC
                       (the 8-bit images as U8)
With torchvision installed, the script also prints how far BlipImageProcessor
(the torchvision backend, transformers' default when torchvision is there) is
from the PIL backend: torch's bicubic is not PIL's, up to several 8-bit levels
(0.11 after normalisation with 1/128; 0.09 with BLIP's mean and std).
  (plain is only applied to `square`: without resizing, other sizes cannot
  feed the model.)

Made with transformers 5.25.0, Pillow 12 and torchvision 0.29.2 (torch 2.15), from PyPI:
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch torchvision "transformers==5.25.0" pillow
  /tmp/venv/bin/python scripts/make_blip_preprocess_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import write_safetensors  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "blip_preprocess")

CONFIGS = {
    "blip": {
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "BlipImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "BlipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 24, "width": 24},
    },
    "rect": {
        "do_convert_rgb": True,
        "do_normalize": False,
        "do_rescale": True,
        "do_resize": True,
        "image_processor_type": "BlipImageProcessor",
        "resample": 3,
        "rescale_factor": 0.0078125,
        "size": {"height": 20, "width": 28},
    },
    "plain": {
        "do_normalize": True,
        "do_rescale": False,
        "do_resize": False,
        "image_mean": 127.5,
        "image_std": 64.0,
        "image_processor_type": "BlipImageProcessor",
        "size": {"height": 24, "width": 24},
    },
}


def images(rng):
    y, x = np.mgrid[0:29, 0:41]
    grad = np.stack([x * 6, y * 8, (x + y) * 3], axis=-1).clip(0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (17, 13, 3), dtype=np.uint8)
    gy, gx = np.mgrid[0:30, 0:30]
    gray = ((gx * 7 + gy * 3) % 256 ^ rng.integers(0, 64, (30, 30))).astype(np.uint8)
    rgba = rng.integers(0, 256, (35, 25, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 35 * 25).reshape(35, 25).astype(np.uint8)
    rgba[:4, :, 3] = 255
    rgba[4:8, :, 3] = 0
    square = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return {
        "grad": Image.fromarray(grad, "RGB"),
        "noise": Image.fromarray(noise, "RGB"),
        "gray": Image.fromarray(gray, "L"),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "square": Image.fromarray(square, "RGB"),
    }


RESIZES = [((11, 13, 3), (10, 10)), ((12, 14, 3), (10, 10)), ((12, 15, 3), (10, 10)), ((8, 30, 3), (10, 10)),
           ((30, 8, 3), (10, 10)), ((40, 97, 1), (31, 20)), ((41, 97, 1), (31, 20)), ((25, 35, 3), (24, 24))]
CROPS = [((40, 120, 3), 16), ((61, 140, 1), 24), ((120, 40, 3), 16)]


def pil_resizes(rng):
    """Pillow's own resizes of noise, and the shorter-side resize + centre crop."""
    t = {}
    for (w, h, c), (ow, oh) in RESIZES:
        src = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        img = Image.fromarray(src[..., 0] if c == 1 else src)
        t[f"src.{w}x{h}x{c}"] = torch.from_numpy(src)
        out = np.array(img.resize((ow, oh), Image.BICUBIC)).reshape(oh, ow, c)
        t[f"resize.{w}x{h}x{c}.{ow}x{oh}"] = torch.from_numpy(np.ascontiguousarray(out))
    for (w, h, c), size in CROPS:
        src = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        img = Image.fromarray(src[..., 0] if c == 1 else src)
        t[f"src.{w}x{h}x{c}"] = torch.from_numpy(src)
        rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        out = np.array(img.resize((rw, rh), Image.BICUBIC)).reshape(rh, rw, c)
        top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
        t[f"crop.{w}x{h}x{c}.{size}"] = torch.from_numpy(np.ascontiguousarray(out[top:top + size, left:left + size]))
    return t


def torchvision_processor(config):
    try:
        import torchvision  # noqa: F401
        from transformers.models.blip.image_processing_blip import BlipImageProcessor
    except ImportError:
        return None
    return BlipImageProcessor(**config)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(15)
    imgs = images(rng)
    for name, img in imgs.items():
        img.save(os.path.join(OUT, f"{name}.png"))
    tensors = pil_resizes(rng)
    for cname, config in CONFIGS.items():
        with open(os.path.join(OUT, f"{cname}.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        backends = {"": BlipImageProcessorPil(**config), ".tv": torchvision_processor(config)}
        for iname in imgs:
            if cname == "plain" and iname != "square":
                continue
            img = Image.open(os.path.join(OUT, f"{iname}.png"))  # as a user's file is read
            for suffix, proc in backends.items():
                if proc is None:
                    continue
                px = proc(images=img, return_tensors="pt")["pixel_values"][0]
                tensors[f"{cname}.{iname}{suffix}"] = px.permute(1, 2, 0).contiguous().float()
    for k in [k for k in tensors if k.endswith(".tv")]:
        d = (tensors.pop(k) - tensors[k[:-3]]).abs().max().item()
        print(f"{k[:-3]}: torchvision backend vs PIL backend, max |diff| {d:.3g}")
    meta = {"transformers": transformers.__version__}
    write_safetensors(os.path.join(OUT, "pixels.safetensors"), tensors, meta)


if __name__ == "__main__":
    main()
