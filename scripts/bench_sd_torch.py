#!/usr/bin/env python3
"""diffusers' StableDiffusionPipeline beside `diffc sample --prompt` on the
same pipeline folder (scripts/make_sd_pipeline.py): one prompt, batch 1 with
classifier-free guidance (7.5), float32 on the CPU. Seconds per denoising
step are the median of the intervals between the pipeline's step callbacks
(the first step, which includes the text encoder, left out); total_s is the
whole call including the VAE decode. Prints
  bench sd model=DIR size=HxW steps=S step_s=X total_s=T peak_mb=M
peak_mb is the process's peak resident set. Made for diffusers 0.42, torch 2.15.

usage: bench_sd_torch.py --model DIR [--height 512] [--width 512] [--steps 6] [--threads T]
"""
import argparse
import resource
import statistics
import time

import torch
from diffusers import StableDiffusionPipeline


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    stamps = []

    def on_step(pipeline, i, t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    with torch.inference_mode():
        t0 = time.perf_counter()
        pipe("a photograph of an astronaut riding a horse", height=a.height, width=a.width,
             num_inference_steps=a.steps, guidance_scale=7.5, generator=torch.manual_seed(0),
             callback_on_step_end=on_step)
        total = time.perf_counter() - t0
    step = statistics.median(b - a_ for a_, b in zip(stamps, stamps[1:]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench sd model={a.model} size={a.height}x{a.width} steps={a.steps} step_s={step:.3f} "
          f"total_s={total:.2f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
