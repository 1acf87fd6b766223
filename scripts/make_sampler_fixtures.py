#!/usr/bin/env python3
"""Reference trajectories for tests/test_samplers.c, from diffusers' schedulers.

Writes tests/fixtures/samplers.safetensors:
  w, noise, v       [25, 96] shared by every case: at step k the "model output"
                    is 0.5 * sample + w[k] (so each step depends on the state;
                    exact in float32 on both sides), and the variance noise of
                    stochastic steps is noise[k]. A model that predicts its
                    variance (variance_type learned, learned_range) outputs
                    v[k] too, concatenated on dim 1 as guided-diffusion's do.
  acp.SCHEDULE      diffusers' alphas_cumprod for each beta schedule used, so
                    the test checks the steps apart from the schedule
                    (betas.linear_zsnr too: the zero-SNR rescaling checked).
  CASE.timesteps    [n] scheduler.timesteps after set_timesteps (i32).
  CASE.traj         [n + 1, 96]: the initial sample (shape [2, 4, 4, 3]) and
                    the sample after every step.
  ts.K              timestep lists only, for many (scheduler, spacing, T, n,
                    steps_offset); "timestep_cases" in __metadata__ lists them.
  add_noise.*       scheduler.add_noise at an img2img start, per scheduler.
Case settings are in __metadata__ ("cases" lists the trajectory cases). The
file is written by hand (json + struct), so the safetensors package is not
needed. The sample is [2, 4, 4, 3]: two images (thresholding works per image).

Also writes tests/fixtures/dpm_scheduler_config.json: DPMSolverMultistepScheduler's
save_config as diffusers writes it (lambda_min_clipped -Infinity, which Python's
json writes and strict JSON lacks).

Made with diffusers 0.42.1 (torch 2.15, numpy 2.4), from PyPI:
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch "diffusers==0.42.1"
  /tmp/venv/bin/python scripts/make_sampler_fixtures.py
"""
import json
import shutil
import tempfile
import os

import numpy as np
import torch
import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from fixture_io import write_safetensors

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(FIXTURES, "samplers.safetensors")
SHAPE = (2, 4, 4, 3)
MAX_STEPS = 25
CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler}
SCHEDULES = {"linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
             "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
             "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02),
             "linear_zsnr": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                 rescale_betas_zero_snr=True)}
LEARNED = ("learned", "learned_range")


def make_scheduler(kind, schedule="linear", T=1000, **options):
    return CLASSES[kind](num_train_timesteps=T, **SCHEDULES[schedule], **options)


def trajectory(kind, steps, w, noise, v, x, eta, options, schedule, T):
    """Run the scheduler as its pipeline does; noise[k] is the variance noise of step k."""
    s = make_scheduler(kind, schedule, T, **options)
    s.set_timesteps(steps)
    learned = options.get("variance_type") in LEARNED
    shape = (2, 3, 4, 4) if learned and kind == "dpm++2m" else SHAPE  # DPM-Solver keeps [:, :3]
    x = x.reshape(shape)
    samples = [x.clone()]
    for k, t in enumerate(s.timesteps):
        model_output = 0.5 * x + w[k].reshape(shape)
        if learned:
            model_output = torch.cat([model_output, v[k].reshape(shape)], dim=1)
        if kind == "ddpm":  # DDPMScheduler.step draws with randn_tensor: hand it our noise
            ddpm_module.randn_tensor = lambda *a, k=k, **kw: noise[k].reshape(shape).clone()
            x = s.step(model_output, t, x).prev_sample
        elif kind == "ddim":
            x = s.step(model_output, t, x, eta=eta, variance_noise=noise[k].reshape(shape) if eta > 0 else None).prev_sample
        else:
            x = s.step(model_output, t, x).prev_sample
        samples.append(x.clone())
    return s.timesteps, torch.stack(samples).reshape(len(samples), -1)


def trajectory_cases(tensors, meta, w, noise, v, x):
    cases = []

    def case(tag, kind, steps, spacing, eta=0.0, schedule="linear", T=1000, **options):
        options = dict(timestep_spacing=spacing, **options)
        v_case = v.abs() * 0.01 if options.get("variance_type") == "learned" else v
        timesteps, traj = trajectory(kind, steps, w, noise, v_case, x, eta, options, schedule, T)
        assert torch.isfinite(traj).all(), tag
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
    # DDPM steps to the next timestep of its list (previous_timestep), not t - T // n
    case("ddpm_linspace_7", "ddpm", 7, "linspace", variance_type="fixed_large")
    case("ddpm_t37_trailing", "ddpm", 6, "trailing", T=37)
    # variance types; a learned variance from the model's second half
    case("ddpm_small_log", "ddpm", 10, "leading", variance_type="fixed_small_log")
    case("ddpm_learned_range", "ddpm", 10, "linspace", variance_type="learned_range")
    case("ddpm_learned", "ddpm", 10, "trailing", variance_type="learned", clip_sample=False)
    case("dpm_learned_range", "dpm++2m", 10, "linspace", variance_type="learned_range")
    # dynamic thresholding (Imagen), per image
    case("ddpm_threshold", "ddpm", 10, "leading", thresholding=True, sample_max_value=2.5,
         dynamic_thresholding_ratio=0.9)
    case("ddim_threshold", "ddim", 10, "trailing", eta=0.5, thresholding=True, sample_max_value=3.0)
    case("ddim_threshold_v", "ddim", 10, "linspace", prediction_type="v_prediction", thresholding=True,
         sample_max_value=1.7, dynamic_thresholding_ratio=0.7)
    case("dpm_threshold", "dpm++2m", 10, "linspace", thresholding=True, sample_max_value=2.0,
         dynamic_thresholding_ratio=0.8)
    # Karras sigmas: rounded timesteps, squaredcos_cap_v2's truncated
    case("dpm_karras", "dpm++2m", 10, "linspace", use_karras_sigmas=True)
    case("dpm_karras_25_v", "dpm++2m", 25, "leading", use_karras_sigmas=True, prediction_type="v_prediction")
    case("dpm_karras_scaled", "dpm++2m", 12, "trailing", schedule="scaled_linear", use_karras_sigmas=True,
         final_sigmas_type="sigma_min")
    case("dpm_karras_lmc", "dpm++2m", 10, "trailing", use_karras_sigmas=True, lambda_min_clipped=-3.0)
    # lambda_min_clipped (diffusers' advice for the cosine schedule: -5.1); trailing loses steps
    case("dpm_lmc_cos", "dpm++2m", 10, "linspace", schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    case("dpm_lmc_leading", "dpm++2m", 10, "leading", schedule="squaredcos_cap_v2", lambda_min_clipped=-3.0)
    case("dpm_lmc_trailing", "dpm++2m", 10, "trailing", schedule="squaredcos_cap_v2", lambda_min_clipped=-3.0)
    # zero terminal SNR: v_prediction with trailing spacing, as Lin et al. use it
    case("ddpm_zsnr", "ddpm", 10, "trailing", schedule="linear_zsnr", prediction_type="v_prediction")
    case("ddim_zsnr", "ddim", 10, "trailing", schedule="linear_zsnr", prediction_type="v_prediction",
         clip_sample=False)
    case("dpm_zsnr", "dpm++2m", 10, "trailing", schedule="linear_zsnr", prediction_type="v_prediction")
    case("dpm_zsnr_karras_eps", "dpm++2m", 10, "linspace", schedule="linear_zsnr", use_karras_sigmas=True)
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
    # Karras timesteps of squaredcos_cap_v2, truncated, not rounded; they repeat timestep 998
    # at the start, where diffusers' step then starts at index 1 and runs off the end
    # (so no trajectory), while diffc steps by index
    for n in [10, 20]:
        s = make_scheduler("dpm++2m", "squaredcos_cap_v2", use_karras_sigmas=True)
        s.set_timesteps(n)
        tensors[f"karras_ts.squaredcos_cap_v2.{n}"] = s.timesteps.to(torch.int32)
        tensors[f"karras_sigmas.squaredcos_cap_v2.{n}"] = s.sigmas


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


def dpm_config():
    """DPMSolverMultistepScheduler's config file as diffusers saves it."""
    with tempfile.TemporaryDirectory() as tmp:
        DPMSolverMultistepScheduler().save_config(tmp)
        path = os.path.join(tmp, "scheduler_config.json")
        with open(path) as f:
            assert json.load(f)["lambda_min_clipped"] == -float("inf")
        shutil.copy(path, os.path.join(FIXTURES, "dpm_scheduler_config.json"))


def main():
    torch.manual_seed(20240612)
    numel = int(np.prod(SHAPE))
    w = torch.randn(MAX_STEPS, numel)
    noise = torch.randn(MAX_STEPS, numel)
    x = torch.randn(SHAPE)
    v = torch.rand(MAX_STEPS, numel) * 2 - 1  # learned_range's interpolation, in [-1, 1]
    tensors = {"w": w, "noise": noise, "v": v}
    for name in SCHEDULES:
        tensors[f"acp.{name}"] = make_scheduler("ddpm", name).alphas_cumprod
    tensors["betas.linear_zsnr"] = make_scheduler("ddpm", "linear_zsnr").betas
    tensors["acp.linear_37"] = make_scheduler("ddpm", "linear", 37).alphas_cumprod
    meta = {"diffusers_version": diffusers.__version__}
    trajectory_cases(tensors, meta, w, noise, v, x)
    timestep_cases(tensors, meta)
    add_noise_cases(tensors, meta, noise)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    write_safetensors(OUT, tensors, meta)
    dpm_config()
    print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
