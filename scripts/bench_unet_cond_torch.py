#!/usr/bin/env python3
"""PyTorch CPU reference for tests/bench_unet_cond.c: diffusers' UNet2DConditionModel
from the same config.json on random weights, one no-grad forward per step (a
sampling step; batch 2 = classifier-free guidance's two halves), timed the
same way; prints the same `bench unet_cond ...` line, with the process's peak
resident memory.

Run with as many threads as bench_unet_cond gets (diffusers 0.42.1, torch 2.15):
  OMP_NUM_THREADS=2 build/bench_unet_cond --config configs/sd15-unet/config.json --size 32
  /work/venv-torch/bin/python scripts/bench_unet_cond_torch.py --config configs/sd15-unet/config.json \\
      --size 32 --threads 2
Channels-last tensors (NHWC like diffc) unless --nchw.
"""
import argparse
import json
import resource
import time

import torch
from diffusers import UNet2DConditionModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--text-len", type=int, default=77)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--nchw", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    size = args.size or config.get("sample_size") or 64
    size = size[0] if isinstance(size, list) else size
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    model = UNet2DConditionModel(**config).eval().to(memory_format=fmt)
    n, width = args.batch, config.get("cross_attention_dim", 1280)
    width = width[0] if isinstance(width, list) else width
    best = best_cpu = float("inf")
    with torch.no_grad():
        for r in range(args.warmup + args.reps):
            x = torch.rand(n, config.get("in_channels", 4), size, size).mul(2).sub(1).to(memory_format=fmt)
            t = torch.rand(n) * 500
            text = torch.rand(n, args.text_len, width).mul(2).sub(1)
            t0, c0 = time.perf_counter(), time.process_time()
            model(x, t, encoder_hidden_states=text)
            if r >= args.warmup:
                best = min(best, time.perf_counter() - t0)
                best_cpu = min(best_cpu, time.process_time() - c0)
    params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench unet_cond config={args.config} batch={n} size={size}x{size} text={args.text_len} "
          f"params={params} fwd_ms={best * 1e3:.1f} cpu_ms={best_cpu * 1e3:.1f} peak_rss_mb={peak:.0f} torch={torch.__version__} "
          f"threads={args.threads}", flush=True)


if __name__ == "__main__":
    main()
