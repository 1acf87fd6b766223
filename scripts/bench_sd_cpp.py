#!/usr/bin/env python3
"""stable-diffusion.cpp (through stable-diffusion-cpp-python, which builds it
from source: pip install stable-diffusion-cpp-python) beside `diffc sample
--prompt` on the same diffusers pipeline folder (scripts/make_sd_pipeline.py;
stable-diffusion.cpp reads a diffusers folder as it is), float32 weights,
batch 1 with guidance 7.5 and its Euler sampler. Its per-step time is the
difference of a run of --steps and one of 2 steps, over the steps between
(both runs pay the same text encoder and VAE); total_s is the longer run.
Prints
  bench sd model=DIR size=HxW steps=S step_s=X total_s=T peak_mb=M
peak_mb is the process's peak resident set. Made for stable-diffusion-cpp-python 0.4.7.

usage: bench_sd_cpp.py --model DIR [--height 512] [--width 512] [--steps 6] [--threads T]
"""
import argparse
import resource
import time

from stable_diffusion_cpp import StableDiffusion


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=-1)
    a = p.parse_args()
    sd = StableDiffusion(model_path=a.model, n_threads=a.threads, wtype="f32", verbose=False)

    def run(steps):
        t0 = time.perf_counter()
        sd.generate_image(prompt="a photograph of an astronaut riding a horse", width=a.width, height=a.height,
                          cfg_scale=7.5, sample_method="euler", sample_steps=steps, seed=0)
        return time.perf_counter() - t0

    short, total = run(2), run(a.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench sd model={a.model} size={a.height}x{a.width} steps={a.steps} "
          f"step_s={(total - short) / (a.steps - 2):.3f} total_s={total:.2f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
