#!/usr/bin/python3
"""PyTorch CPU reference for tests/bench_cpu_ops.c: the same cases, timed the same way.

Run with Debian's python3-torch (/usr/bin/python3); scripts/bench.sh runs both
programs with the same thread count and prints the ratio. Convolutions use
channels_last tensors (what oneDNN wants, and NHWC like diffc). Prints one
line per case: `bench OP name=... fwd_ms=... bwd_ms=... total_ms=... gflops=...`,
each time the best of the repetitions.
"""
import argparse
import time

import torch
import torch.nn.functional as F

# name, N, H, W, Cin, Cout, k, stride, pad, input requires grad (a network's
# first convolution gets none: its input is data): keep in step with tests/bench_cpu_ops.c
CONVS = [
    ("conv3x3_c64_32x32", 32, 32, 32, 64, 64, 3, 1, 1, True),
    ("conv3x3_c128_16x16", 32, 16, 16, 128, 128, 3, 1, 1, True),
    ("conv1x1_c64to128_32x32", 32, 32, 32, 64, 128, 1, 1, 0, True),
    ("conv3x3s2_c128_32x32", 32, 32, 32, 128, 128, 3, 2, 1, True),
    ("conv_in_c3to64_32x32", 32, 32, 32, 3, 64, 3, 1, 1, False),
    # configs/fashion-mnist.json's layers at its batch of 64 (fm_1x1: the attention
    # blocks' projections, which diffc runs as 1x1 convolutions)
    ("fm_c16_32x32", 64, 32, 32, 16, 16, 3, 1, 1, True),
    ("fm_c32_16x16", 64, 16, 16, 32, 32, 3, 1, 1, True),
    ("fm_c64_8x8", 64, 8, 8, 64, 64, 3, 1, 1, True),
    ("fm_c48to32_16x16", 64, 16, 16, 48, 32, 3, 1, 1, True),
    ("fm_c32to16_32x32", 64, 32, 32, 32, 16, 3, 1, 1, True),
    ("fm_c1to16_32x32", 64, 32, 32, 1, 16, 3, 1, 1, False),
    ("fm_1x1_c32_16x16", 64, 16, 16, 32, 32, 1, 1, 0, True),
    ("fm_1x1_c64_8x8", 64, 8, 8, 64, 64, 1, 1, 0, True),
]
# name, M, K (in), N (out)
LINEARS = [("linear_4096x512x512", 4096, 512, 512)]


def best_times(step, reps, warmup):
    """Best forward, backward and total time (ms) of `step`, which returns (fwd_s, bwd_s)."""
    for _ in range(warmup):
        step()
    times = [step() for _ in range(reps)]
    return min(t[0] for t in times) * 1e3, min(t[1] for t in times) * 1e3, min(sum(t) for t in times) * 1e3


def run_case(op, name, fwd, inputs, flops, reps, warmup):
    dy = torch.randn_like(fwd())

    def step():
        for t in inputs:
            t.grad = None
        t0 = time.perf_counter()
        y = fwd()
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    f, b, total = best_times(step, reps, warmup)
    print(f"bench {op} name={name} fwd_ms={f:.3f} bwd_ms={b:.3f} total_ms={total:.3f} "
          f"gflops={flops / total / 1e6:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    for name, n, h, w, cin, cout, k, s, p, dx in CONVS:
        x = torch.randn(n, cin, h, w).to(memory_format=torch.channels_last).requires_grad_(dx)
        wt = torch.randn(cout, cin, k, k).to(memory_format=torch.channels_last).requires_grad_()
        b = torch.randn(cout, requires_grad=True)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        flops = (3 if dx else 2) * 2 * n * ho * wo * cout * k * k * cin  # forward, dx, dw
        run_case("conv2d", name, lambda: F.conv2d(x, wt, b, s, p), [x, wt, b], flops,
                 args.reps, args.warmup)

    for name, m, kin, nout in LINEARS:
        x = torch.randn(m, kin, requires_grad=True)
        wt = torch.randn(nout, kin, requires_grad=True)
        b = torch.randn(nout, requires_grad=True)
        flops = 3 * 2 * m * kin * nout
        run_case("linear", name, lambda: F.linear(x, wt, b), [x, wt, b], flops,
                 args.reps, args.warmup)


if __name__ == "__main__":
    main()
