#!/usr/bin/env python3
"""transformers' BlipForConditionalGeneration beside tests/bench_blip.c: random
weights from a BLIP config.json, random normalised pixels, greedy (or
--num-beams) generate() of exactly max_length tokens (min_length = max_length:
no early stop), best of --reps after --warmup. Prints
  bench blip config=PATH batch=N max_length=L num_beams=K params=P vision_ms=V decode_ms=D
  total_ms=T images_per_s=I peak_mb=M
where decode_ms is total minus the vision model's own forward, timed apart;
peak_mb is the process's peak resident set. Made for transformers 5.25, torch 2.15.

usage: bench_blip_torch.py --config PATH [--batch N] [--max-length L] [--num-beams K] [--reps N]
       [--warmup N] [--threads T]
"""
import argparse
import json
import resource
import time

import torch
from transformers import BlipConfig, BlipForConditionalGeneration


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        config = BlipConfig(**json.load(f))
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    s = config.vision_config.image_size
    pixels = torch.rand(a.batch, 3, s, s) * 2 - 1
    best_v = best_t = float("inf")
    with torch.inference_mode():
        for r in range(a.warmup + a.reps):
            t0 = time.perf_counter()
            model.vision_model(pixel_values=pixels)
            t1 = time.perf_counter()
            model.generate(pixel_values=pixels, max_length=a.max_length, min_length=a.max_length,
                           num_beams=a.num_beams, do_sample=False)
            t2 = time.perf_counter()
            if r >= a.warmup:
                best_v, best_t = min(best_v, t1 - t0), min(best_t, t2 - t1)
    params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench blip config={a.config} batch={a.batch} max_length={a.max_length} num_beams={a.num_beams} "
          f"params={params} "
          f"vision_ms={best_v * 1e3:.1f} decode_ms={(best_t - best_v) * 1e3:.1f} total_ms={best_t * 1e3:.1f} "
          f"images_per_s={a.batch / best_t:.3f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
