#!/usr/bin/env python3
"""transformers' CLIPTextModel beside tests/bench_clip_text.c: random weights
from a CLIPTextConfig config.json, a batch of max_position_embeddings tokens
(bos, 20 random tokens, eos, eos as padding), last_hidden_state and
pooler_output, best of --reps after --warmup. Prints
  bench clip_text config=PATH device=cpu batch=N tokens=L params=P forward_ms=F
  prompts_per_s=R peak_mb=M
Made for transformers 5.25, torch 2.15.

usage: bench_clip_text_torch.py --config PATH [--batch N] [--reps N] [--warmup N] [--threads T]
"""
import argparse
import json
import resource
import time

import torch
from transformers import CLIPTextConfig, CLIPTextModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        config = CLIPTextConfig(**json.load(f))
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    length, vocab = config.max_position_embeddings, config.vocab_size
    ids = torch.full((a.batch, length), vocab - 1)
    ids[:, 0] = vocab - 2
    ids[:, 1:min(21, length - 1)] = torch.randint(0, vocab - 2, (a.batch, min(20, length - 2)))
    best = float("inf")
    with torch.inference_mode():
        for r in range(a.warmup + a.reps):
            t0 = time.perf_counter()
            model(input_ids=ids)
            if r >= a.warmup:
                best = min(best, time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench clip_text config={a.config} device=cpu batch={a.batch} tokens={length} params={params} "
          f"forward_ms={best * 1e3:.2f} prompts_per_s={a.batch / best:.2f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
