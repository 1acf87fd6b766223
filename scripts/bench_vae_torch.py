#!/usr/bin/env python3
"""diffusers' AutoencoderKL beside tests/bench_vae.c: the SD 1.x/2.x VAE
layout (or --config) with random weights, decode of random latents (or
--encode of random images) under inference_mode, best of --reps. Prints
  bench vae op=decode size=S batch=N params=P ms=T params_mb=W peak_mb=M
params_mb is the resident set after the model is made, peak_mb the
process's peak resident set. Made for diffusers 0.42, torch 2.15. One size
per process: the peak only grows.

usage: bench_vae_torch.py [--config PATH] [--size S] [--batch N] [--encode] [--reps N] [--threads T]
"""
import argparse
import json
import resource
import time

import torch
from diffusers import AutoencoderKL

SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
              norm_num_groups=32, sample_size=512)


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--encode", action="store_true")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    config = SD_VAE
    if a.config:
        with open(a.config) as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = AutoencoderKL(**config).eval()
    params_mb = rss_mb()
    down = 2 ** (len(model.config.block_out_channels) - 1)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(a.reps):
            if a.encode:
                x = torch.rand(a.batch, model.config.in_channels, a.size, a.size) * 2 - 1
            else:
                x = torch.randn(a.batch, model.config.latent_channels, a.size // down, a.size // down)
            t0 = time.perf_counter()
            if a.encode:
                model.encode(x).latent_dist.mean
            else:
                model.decode(x).sample
            best = min(best, time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    print(f"bench vae op={'encode' if a.encode else 'decode'} size={a.size} batch={a.batch} params={params} "
          f"ms={best * 1e3:.0f} params_mb={params_mb:.0f} peak_mb={rss_mb():.0f}")


if __name__ == "__main__":
    main()
