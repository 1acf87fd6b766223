#!/usr/bin/python3
"""PyTorch reference for the data benchmarks (tests/bench_loader.c, tests/bench_cache.c).

Run with Debian's python3-torch and python3-torchvision (/usr/bin/python3);
scripts/bench.sh runs both sides and prints the ratios. Subcommands:

  serve         batches served by a DataLoader with torchvision transforms
                (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize([0.5], [0.5]))
                over uint8 images in memory, as torchvision's MNIST and CIFAR10
                datasets do it: `pil` makes a PIL image per item (their way),
                `array` hands ToTensor the numpy array and crops and flips the
                tensor. One line per case, the best of --reps runs:
                  bench loader name=NAME workers=W mode=M batches_per_s=X images_per_s=Y
  make-folder   write the image folder that both cache benchmarks read: two
                class folders of 256x256 RGB images, half JPEG, half PNG.
  cache         decode that folder into one uint8 array [N, 64, 64, 3] with
                ImageFolder (PIL open, convert RGB, resize BICUBIC, to array)
                through a DataLoader:
                  bench cache name=NAME workers=W images_per_s=Y
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

# name, count, H, W, C, batch, crop (0: none): keep in step with tests/bench_loader.c
CASES = [
    ("28x28x1_flip_crop24_b128", 60000, 28, 28, 1, 128, 24),
    ("64x64x3_flip_crop56_b64", 10000, 64, 64, 3, 64, 56),
    ("64x64x3_flip_b64", 10000, 64, 64, 3, 64, 0),
]


class PilImages(Dataset):
    """uint8 images in memory, a PIL image per item (torchvision.datasets.MNIST/CIFAR10)."""

    def __init__(self, pixels, labels, transform):
        self.pixels, self.labels, self.transform = pixels, labels, transform

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        a = self.pixels[i]
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, mode="L" if a.shape[2] == 1 else "RGB")
        return self.transform(img), int(self.labels[i])


class ArrayImages(PilImages):
    """The same, with the numpy array given to the transforms directly."""

    def __getitem__(self, i):
        return self.transform(self.pixels[i]), int(self.labels[i])


def serve_transform(mode, crop, channels):
    flip_crop = [transforms.RandomCrop(crop)] if crop else []
    flip_crop.append(transforms.RandomHorizontalFlip())
    norm = transforms.Normalize([0.5] * channels, [0.5] * channels)
    if mode == "pil":
        return transforms.Compose(flip_crop + [transforms.ToTensor(), norm])
    return transforms.Compose([transforms.ToTensor()] + flip_crop + [norm])


def serve_case(case, mode, workers, seconds):
    name, count, h, w, c, batch, crop = case
    rng = np.random.default_rng(1234)
    pixels = rng.integers(0, 256, size=(count, h, w, c), dtype=np.uint8)
    labels = np.arange(count) % 10
    ds = (PilImages if mode == "pil" else ArrayImages)(pixels, labels, serve_transform(mode, crop, c))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    it = iter(loader)

    def take():
        nonlocal it
        try:
            return next(it)
        except StopIteration:  # a new epoch, as a training loop would start it
            it = iter(loader)
            return next(it)

    for _ in range(2 * max(workers, 1)):  # workers started, queue filled
        take()
    n, t0 = 0, time.perf_counter()
    while True:
        take()
        n += 1
        t = time.perf_counter() - t0
        if t >= seconds:
            return n / t


def cmd_serve(args):
    for case in CASES:
        if args.case and args.case not in case[0]:
            continue
        for mode in args.modes.split(","):
            for workers in [int(x) for x in args.workers.split(",")]:
                best = max(serve_case(case, mode, workers, args.seconds) for _ in range(args.reps))
                print(f"bench loader name={case[0]} workers={workers} mode={mode} "
                      f"batches_per_s={best:.1f} images_per_s={best * case[5]:.0f}", flush=True)


def cmd_make_folder(args):
    """Smooth random colour fields with some noise: photographs compress about so."""
    rng = np.random.default_rng(7)
    for k in range(args.count):
        folder = os.path.join(args.dir, "cats" if k % 2 else "dogs")
        os.makedirs(folder, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
        base = np.asarray(small.resize((256, 256), Image.BICUBIC), dtype=np.int16)
        px = np.clip(base + rng.integers(-12, 13, size=base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(px, "RGB")
        if k % 4 < 2:
            img.save(os.path.join(folder, f"{k:05d}.jpg"), quality=90)
        else:
            img.save(os.path.join(folder, f"{k:05d}.png"))


def to_64(img):
    return np.asarray(img.resize((64, 64), Image.BICUBIC))


def collate_arrays(items):
    return np.stack([a for a, _ in items]), np.array([y for _, y in items])


def cmd_cache(args):
    ds = datasets.ImageFolder(args.dir, transform=to_64)
    for workers in [int(x) for x in args.workers.split(",")]:
        best = 0
        for _ in range(args.reps):
            t0 = time.perf_counter()
            loader = DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate_arrays)
            cache = np.concatenate([a for a, _ in loader])
            t = time.perf_counter() - t0
            assert cache.shape == (len(ds), 64, 64, 3)
            best = max(best, len(ds) / t)
        print(f"bench cache name=folder_256_to_64 workers={workers} images_per_s={best:.0f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--seconds", type=float, default=2)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--workers", default="0,1,2")
    s.add_argument("--modes", default="pil,array")
    s.add_argument("--case")
    m = sub.add_parser("make-folder")
    m.add_argument("dir")
    m.add_argument("--count", type=int, default=1000)
    c = sub.add_parser("cache")
    c.add_argument("dir")
    c.add_argument("--reps", type=int, default=3)
    c.add_argument("--workers", default="0,1,2")
    args = p.parse_args()
    torch.manual_seed(0)
    {"serve": cmd_serve, "make-folder": cmd_make_folder, "cache": cmd_cache}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
