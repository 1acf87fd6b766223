#!/usr/bin/env python3
"""Reference trajectories for tests/test_samplers.c, from diffusers' schedulers.

Writes tests/fixtures/samplers.safetensors:
  w, noise          [25, 96] shared by every case: at step k the "model output"
                    is 0.5 * sample + w[k] (so each step depends on the state;
                    exact in float32 on both sides), and the variance noise of
                    stochastic steps is noise[k].
  acp.SCHEDULE      diffusers' alphas_cumprod for each beta schedule used, so
                    the test checks the steps apart from the schedule.
  CASE.timesteps    [n] scheduler.timesteps after set_timesteps (i32).
  CASE.traj         [n + 1, 96]: the initial sample (shape [2, 4, 4, 3]) and
                    the sample after every step.
  ts.K              timestep lists only, for many (scheduler, spacing, T, n,
                    steps_offset); "timestep_cases" in __metadata__ lists them.
  add_noise.*       scheduler.add_noise at an img2img start, per scheduler.
Case settings are in __metadata__ ("cases" lists the trajectory cases). The
file is written by hand (json + struct), so the safetensors package is not
needed.

Needs torch and diffusers 0.27.2. With Debian's python3-torch (1.13):
  python3 -m venv --system-site-packages /tmp/dvenv
  /tmp/dvenv/bin/pip install "diffusers==0.27.2" "huggingface_hub<0.26"
  /tmp/dvenv/bin/python scripts/make_sampler_fixtures.py
"""
import os

import numpy as np
import torch
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from fixture_io import write_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "samplers.safetensors")
SHAPE = (2, 4, 4, 3)
MAX_STEPS = 25
CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler}
SCHEDULES = {"linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
             "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
             "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02)}


def make_scheduler(kind, schedule="linear", T=1000, **options):
    return CLASSES[kind](num_train_timesteps=T, **SCHEDULES[schedule], **options)


def trajectory(kind, steps, w, noise, x, eta, options, schedule, T):
    """Run the scheduler as its pipeline does; noise[k] is the variance noise of step k."""
    s = make_scheduler(kind, schedule, T, **options)
    s.set_timesteps(steps)
    samples = [x.clone()]
    for k, t in enumerate(s.timesteps):
        model_output = 0.5 * x + w[k].reshape(SHAPE)
        if kind == "ddpm":  # DDPMScheduler.step draws with randn_tensor: hand it our noise
            ddpm_module.randn_tensor = lambda *a, k=k, **kw: noise[k].reshape(SHAPE).clone()
            x = s.step(model_output, t, x).prev_sample
        elif kind == "ddim":
            x = s.step(model_output, t, x, eta=eta, variance_noise=noise[k].reshape(SHAPE) if eta > 0 else None).prev_sample
        else:
            x = s.step(model_output, t, x).prev_sample
        samples.append(x.clone())
    return s.timesteps, torch.stack(samples).reshape(len(samples), -1)


def trajectory_cases(tensors, meta, w, noise, x):
    cases = []

    def case(tag, kind, steps, spacing, eta=0.0, schedule="linear", T=1000, **options):
        options = dict(timestep_spacing=spacing, **options)
        timesteps, traj = trajectory(kind, steps, w, noise, x, eta, options, schedule, T)
        tensors[f"{tag}.timesteps"] = timesteps.to(torch.int32)
        tensors[f"{tag}.traj"] = traj
        meta.update({f"{tag}.kind": kind, f"{tag}.steps": steps, f"{tag}.eta": eta,
                     f"{tag}.schedule": schedule, f"{tag}.T": T})
        meta.update({f"{tag}.{k}": v for k, v in {**SCHEDULES[schedule], **options}.items()})
        cases.append(tag)

    for spacing in ["leading", "trailing", "linspace"]:
        case(f"ddpm_{spacing}", "ddpm", 10, spacing)
        case(f"ddim_{spacing}", "ddim", 10, spacing)
        case(f"ddim_eta_{spacing}", "ddim", 10, spacing, eta=0.7)
        case(f"dpm_{spacing}", "dpm++2m", 10, spacing)
    case("ddpm_large", "ddpm", 10, "leading", variance_type="fixed_large")
    case("ddpm_large_offset", "ddpm", 10, "leading", variance_type="fixed_large", steps_offset=1)
    case("ddpm_v_noclip", "ddpm", 10, "trailing", prediction_type="v_prediction", clip_sample=False)
    case("ddpm_sample_range", "ddpm", 10, "linspace", prediction_type="sample", clip_sample_range=1.5)
    case("ddpm_cos_25", "ddpm", 25, "leading", schedule="squaredcos_cap_v2")
    case("ddim_v", "ddim", 10, "trailing", eta=1.0, prediction_type="v_prediction")
    case("ddim_sample_noclip", "ddim", 10, "leading", prediction_type="sample", clip_sample=False,
         set_alpha_to_one=False, steps_offset=1)
    case("ddim_cos_25", "ddim", 25, "linspace", schedule="squaredcos_cap_v2", clip_sample_range=2.0)
    case("ddim_t37", "ddim", 7, "leading", eta=0.3, T=37)
    case("dpm_25", "dpm++2m", 25, "linspace")
    case("dpm_v_scaled", "dpm++2m", 10, "trailing", schedule="scaled_linear", prediction_type="v_prediction")
    case("dpm_sample", "dpm++2m", 10, "leading", prediction_type="sample", steps_offset=1)
    case("dpm_sigma_min", "dpm++2m", 10, "linspace", final_sigmas_type="sigma_min")
    case("dpm_no_lof_sigma_min", "dpm++2m", 10, "linspace", lower_order_final=False,
         final_sigmas_type="sigma_min")
    case("dpm_cos_25_sigma_min", "dpm++2m", 25, "trailing", schedule="squaredcos_cap_v2",
         final_sigmas_type="sigma_min")
    meta["cases"] = ",".join(cases)


def timestep_cases(tensors, meta):
    """Lists only: both T, edge counts (n = T), and n = 61 (numpy's arange makes 62 trailing steps)."""
    specs = []
    for kind in CLASSES:
        for spacing in ["leading", "trailing", "linspace"]:
            for T, counts in [(1000, [1, 2, 3, 7, 10, 16, 25, 61, 100]), (37, [1, 5, 36, 37])]:
                for n in counts:
                    for offset in [0, 1] if spacing == "leading" else [0]:
                        s = make_scheduler(kind, T=T, timestep_spacing=spacing, steps_offset=offset)
                        s.set_timesteps(n)
                        tensors[f"ts.{len(specs)}"] = s.timesteps.to(torch.int32)
                        specs.append(f"{kind},{spacing},{T},{n},{offset}")
    meta["timestep_cases"] = ";".join(specs)


def add_noise_cases(tensors, meta, noise):
    """img2img: 10 steps at strength 0.6 start at index 4; noise at that step's timestep."""
    x0 = torch.randn(SHAPE)
    tensors["add_noise.x0"] = x0.reshape(-1)
    for kind in CLASSES:
        s = make_scheduler(kind)
        s.set_timesteps(10)
        start = 10 - int(10 * 0.6)
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(start)
        tensors[f"add_noise.{kind}"] = s.add_noise(x0, noise[0].reshape(SHAPE),
                                                 s.timesteps[start:start + 1]).reshape(-1)
        meta[f"add_noise.{kind}.index"] = start


def main():
    torch.manual_seed(20240612)
    numel = int(np.prod(SHAPE))
    w = torch.randn(MAX_STEPS, numel)
    noise = torch.randn(MAX_STEPS, numel)
    x = torch.randn(SHAPE)
    tensors = {"w": w, "noise": noise}
    for name in SCHEDULES:
        tensors[f"acp.{name}"] = make_scheduler("ddpm", name).alphas_cumprod
    tensors["acp.linear_37"] = make_scheduler("ddpm", "linear", 37).alphas_cumprod
    meta = {}
    trajectory_cases(tensors, meta, w, noise, x)
    timestep_cases(tensors, meta)
    add_noise_cases(tensors, meta, noise)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    write_safetensors(OUT, tensors, meta)
    print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
