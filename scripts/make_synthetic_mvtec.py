#!/usr/bin/env python3
"""A small synthetic MVTec AD category: textures with pasted defects and their masks.

  /work/venv-torch/bin/python scripts/make_synthetic_mvtec.py OUT [--size 16] [--train 32]
      [--good 8] [--defective 4] [--seed 0]

Writes OUT in MVTec AD's layout, which `diffc anomaly --labels OUT` reads:
  OUT/train/good/NNN.png               defect-free textures (train the model on these)
  OUT/test/good/NNN.png                defect-free textures
  OUT/test/<defect>/NNN.png            textures with one defect each (--defective per kind)
  OUT/ground_truth/<defect>/NNN_mask.png  255 where the defect is, else 0

The texture: RGB diagonal stripes (period 4 to 6 pixels, random phase, a
tint near a base colour) with a little pixel noise. The defects: "spot", a
filled disc of a colour far from the texture's (radius size/8 to size/5);
"scratch", a 1 to 2 pixel line across a third to a half of the image in a
darker shade; "patch", a square of the texture mirrored left to right (its stripes
run along the other diagonal, so only its structure differs). Everything follows --seed
(numpy's PCG64), so a seed gives the same files every time; only numpy and
Pillow are needed (no torch, no diffusers).
"""
import argparse
import os

import numpy as np
from PIL import Image

DEFECTS = ("spot", "scratch", "patch")


def texture(rng, size):
    """[size, size, 3] uint8: diagonal stripes with a tint and pixel noise."""
    period = rng.uniform(4, 6)
    phase = rng.uniform(0, period)
    y, x = np.mgrid[0:size, 0:size]
    stripe = 0.5 + 0.5 * np.sin(2 * np.pi * ((x + y) + phase) / period)
    base = np.array([150.0, 110.0, 70.0]) + rng.uniform(-10, 10, 3)
    img = base + 60.0 * (stripe[..., None] - 0.5) + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), (period, phase, base)


def spot(rng, img, size):
    mask = np.zeros((size, size), bool)
    r = rng.uniform(size / 8, size / 5)
    cy, cx = rng.uniform(r, size - r, 2)
    y, x = np.mgrid[0:size, 0:size]
    mask[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = True
    img[mask] = np.array([40, 160, 220]) + rng.integers(-10, 10, 3)
    return mask


def scratch(rng, img, size):
    mask = np.zeros((size, size), bool)
    length = rng.uniform(size / 3, size / 2)
    angle = rng.uniform(0, np.pi)
    y0, x0 = rng.uniform(size / 4, 3 * size / 4, 2)
    width = rng.integers(1, 3)
    for s in np.linspace(-length / 2, length / 2, int(4 * length)):
        y, x = int(round(y0 + s * np.sin(angle))), int(round(x0 + s * np.cos(angle)))
        mask[max(y, 0):min(y + width, size), max(x, 0):min(x + width, size)] = True
    img[mask] = (img[mask] * 0.35).astype(np.uint8)
    return mask


def patch(rng, img, size):
    mask = np.zeros((size, size), bool)
    side = int(rng.integers(size // 4, size // 3 + 1))
    y, x = rng.integers(0, size - side + 1, 2)
    img[y:y + side, x:x + side] = np.ascontiguousarray(img[y:y + side, x:x + side][:, ::-1])
    mask[y:y + side, x:x + side] = True
    return mask


def save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--good", type=int, default=8)
    ap.add_argument("--defective", type=int, default=4, help="test images per defect kind")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.Generator(np.random.PCG64(a.seed))
    for i in range(a.train):
        save(f"{a.out}/train/good/{i:03d}.png", texture(rng, a.size)[0])
    for i in range(a.good):
        save(f"{a.out}/test/good/{i:03d}.png", texture(rng, a.size)[0])
    makers = {"spot": spot, "scratch": scratch, "patch": patch}
    for kind in DEFECTS:
        for i in range(a.defective):
            img = texture(rng, a.size)[0]
            mask = makers[kind](rng, img, a.size)
            save(f"{a.out}/test/{kind}/{i:03d}.png", img)
            save(f"{a.out}/ground_truth/{kind}/{i:03d}_mask.png", (mask * 255).astype(np.uint8))


if __name__ == "__main__":
    main()
