#!/usr/bin/env python3
"""diffusers reference for tests/bench_sample.c: DDIM sampling of one batch with
diffusers' UNet2DModel (random weights) from the same config, timed the same
way; prints the same `bench sample ...` line.

Unconditional models run DDIMPipeline itself. DDIMPipeline cannot pass class
labels, so class-conditional models run its loop (set_timesteps, then the UNet
and DDIMScheduler.step per timestep) with labels 0, 1, 2, ... added.
The config may be a diffusers config.json or a training config whose "model"
holds one (configs/fashion-mnist.json).

Run with the venv of scripts/make_unet_fixtures.py (diffusers over Debian's
torch), with as many threads as bench_sample gets:
  OMP_NUM_THREADS=2 build/bench_sample --config CONFIG --batch 64
  /tmp/dvenv/bin/python scripts/bench_sample_torch.py --config CONFIG --batch 64 --threads 2
"""
import argparse
import json
import time

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from bench_train_torch import count_forward_flops  # this folder is on sys.path


def sample_with_labels(unet, scheduler, n, steps, size, labels, generator):
    """DDIMPipeline.__call__'s loop, with class labels."""
    image = torch.randn((n, unet.config.in_channels, size, size), generator=generator)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        model_output = unet(image, t, class_labels=labels).sample
        image = scheduler.step(model_output, t, image, eta=0.0, generator=generator).prev_sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        config = json.load(f)
    config = config.get("model", config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    size = config.get("sample_size") or 32
    size = size[0] if isinstance(size, list) else size
    torch.manual_seed(1)
    unet = UNet2DModel(**config).eval()
    scheduler = DDIMScheduler()
    params = sum(p.numel() for p in unet.parameters())
    classes = config.get("num_class_embeds")
    labels = torch.arange(args.batch) % max(classes - 1, 1) if classes else None
    x = torch.randn(1, unet.config.in_channels, size, size)
    flops = count_forward_flops(unet, x, torch.tensor([10]), labels[:1] if classes else None)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    best = float("inf")
    with torch.no_grad():
        for _ in range(args.reps):
            generator = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            if labels is None:
                pipe(batch_size=args.batch, num_inference_steps=args.steps, eta=0.0, generator=generator,
                     output_type="np")
            else:
                sample_with_labels(unet, scheduler, args.batch, args.steps, size, labels, generator)
            best = min(best, time.perf_counter() - t0)
    print(f"bench sample config={args.config} batch={args.batch} steps={args.steps} size={size}x{size} "
          f"params={params} seconds={best:.3f} images_per_s={args.batch / best:.2f} "
          f"fwd_gflop_per_image={flops / 1e9:.4f}")


if __name__ == "__main__":
    main()
