#!/usr/bin/python3
"""PyTorch CUDA reference for tests/bench_cuda_ops.c: the same cases, timed the same way
(CUDA events around forward and around backward, best of --reps after two warm-ups).

tf32: fp32 tensors with TF32 allowed in cuDNN and cuBLAS; bf16: autocast to
bfloat16. Convolutions and group norms run channels_last (NHWC, as diffc);
attention is F.scaled_dot_product_attention over [N, heads, L, d], as
diffusers' AttnProcessor2_0. Prints `bench OP name=... math=... fwd_ms=...
bwd_ms=... total_ms=...`; exits 77 without a GPU.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

# name, op, x shape (NHWC / [M, K] / [N, L, C]), p0, p1: keep in step with tests/bench_cuda_ops.c
CASES = [
    ("conv3x3_c128_32x32", "conv2d", (8, 32, 32, 128), 128, 3),
    ("conv3x3_c256_16x16", "conv2d", (8, 16, 16, 256), 256, 3),
    ("linear_8192x512x512", "linear", (8192, 512), 512, 0),
    ("group_norm_c128_32x32", "group_norm", (8, 32, 32, 128), 32, 0),
    ("attention_1024tok_c128_h4", "attention", (8, 1024, 128), 4, 0),
    ("attention_256tok_c256_h8", "attention", (8, 256, 256), 8, 0),
]


def make(op, shape, p0, p1):
    """The inputs (requiring grad) and the forward function of a case."""
    dev = "cuda"
    if op in ("conv2d", "group_norm"):
        n, h, w, c = shape
        x = torch.randn(n, c, h, w, device=dev).to(memory_format=torch.channels_last)
        x.requires_grad_()
        if op == "conv2d":
            wt = (0.05 * torch.randn(p0, c, p1, p1, device=dev)).to(memory_format=torch.channels_last)
            b = 0.1 * torch.randn(p0, device=dev)
            wt.requires_grad_(), b.requires_grad_()
            return [x, wt, b], lambda: F.conv2d(x, wt, b, padding=p1 // 2)
        wt = torch.randn(c, device=dev, requires_grad=True)
        b = torch.randn(c, device=dev, requires_grad=True)
        return [x, wt, b], lambda: F.group_norm(x, p0, wt, b, 1e-5)
    if op == "linear":
        x = torch.randn(*shape, device=dev, requires_grad=True)
        wt = (0.05 * torch.randn(p0, shape[1], device=dev)).requires_grad_()
        b = (0.1 * torch.randn(p0, device=dev)).requires_grad_()
        return [x, wt, b], lambda: F.linear(x, wt, b)
    n, L, c = shape
    x = torch.randn(n, L, c, device=dev, requires_grad=True)

    def attention():
        q = x.view(n, L, p0, c // p0).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(n, L, c)

    return [x], attention


def timed(fn):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    stop.record()
    stop.synchronize()
    return out, start.elapsed_time(stop)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_torch_cuda_ops: no CUDA GPU", file=sys.stderr)
        sys.exit(77)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    for name, op, shape, p0, p1 in CASES:
        for math in ("tf32", "bf16"):
            inputs, fwd = make(op, shape, p0, p1)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=math == "bf16"):
                dy = torch.randn_like(fwd())
            best = None
            for r in range(args.reps + 2):
                for t in inputs:
                    t.grad = None
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=math == "bf16"):
                    y, f = timed(fwd)
                _, b = timed(lambda: y.backward(dy))
                if r >= 2 and (best is None or f + b < best[0] + best[1]):
                    best = (f, b)
            print(f"bench {op} name={name} math={math} fwd_ms={best[0]:.4f} bwd_ms={best[1]:.4f} "
                  f"total_ms={best[0] + best[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
