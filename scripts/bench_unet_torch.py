#!/usr/bin/env python3
"""PyTorch CPU reference for tests/bench_unet.c: diffusers' UNet2DModel from the
same config.json, one forward and backward (input and every parameter) per
step, timed the same way; prints the same `bench unet ...` line.

Run with the venv of scripts/make_unet_fixtures.py (diffusers over Debian's
torch), with as many threads as bench_unet gets:
  OMP_NUM_THREADS=2 build/bench_unet --config CONFIG --batch 8
  /tmp/dvenv/bin/python scripts/bench_unet_torch.py --config CONFIG --batch 8 --threads 2
Channels-last tensors (what oneDNN wants, NHWC like diffc) unless --nchw.
"""
import argparse
import json
import time

import torch
from diffusers import UNet2DModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--nchw", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    size = args.size or config.get("sample_size") or 32
    size = size[0] if isinstance(size, list) else size
    model = UNet2DModel(**config).train()
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    model = model.to(memory_format=fmt)
    n = args.batch
    y = torch.arange(n) % config["num_class_embeds"] if config.get("num_class_embeds") else None
    best_f = best_b = best_t = float("inf")
    for r in range(args.warmup + args.reps):
        model.zero_grad(set_to_none=True)
        x = torch.rand(n, config.get("in_channels", 3), size, size).mul(2).sub(1)
        x = x.to(memory_format=fmt).requires_grad_(True)
        t = torch.rand(n) * 500
        dy = torch.rand(n, config.get("out_channels", 3), size, size).mul(2).sub(1).to(memory_format=fmt)
        t0 = time.perf_counter()
        out = model(x, t, class_labels=y).sample
        t1 = time.perf_counter()
        out.backward(dy)
        t2 = time.perf_counter()
        if r >= args.warmup:
            best_f, best_b, best_t = min(best_f, t1 - t0), min(best_b, t2 - t1), min(best_t, t2 - t0)
    params = sum(p.numel() for p in model.parameters())
    print(f"bench unet config={args.config} batch={n} size={size}x{size} params={params} "
          f"fwd_ms={best_f * 1e3:.1f} bwd_ms={best_b * 1e3:.1f} total_ms={best_t * 1e3:.1f} "
          f"images_per_s={n / best_t:.2f} torch={torch.__version__} threads={args.threads}", flush=True)


if __name__ == "__main__":
    main()
