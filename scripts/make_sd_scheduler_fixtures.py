#!/usr/bin/env python3
"""Reference runs of Stable Diffusion's schedulers for tests/test_samplers.c.

Writes tests/fixtures/sd_schedulers.safetensors. Every case is a
scheduler_config.json (metadata "CASE.config", whose _class_name picks the
scheduler; the C test reads it as diffc reads a pipeline's) built from the
scheduler configs that SD-1.5 and SD-2.1 (768, v_prediction) ship, with the
options a user swaps in (another class, Karras sigmas, a spacing), run as
StableDiffusionPipeline runs it:

  latents = x * init_noise_sigma
  for k, t in enumerate(timesteps):
      model_in = scale_model_input(latents, t)
      eps = 0.5 * model_in + w[k] * (float32(t) / 1000)     # the fake model
      latents = step(eps, t, latents)        # EulerAncestral: noise[k] drawn

Tensors:
  x, w, noise       [1, 96] / [24, 96] shared: the initial noise, the fake
                    model's per-step term, the per-step ancestral noise. The
                    sample is [2, 4, 4, 3] (two images).
  CASE.timesteps    [n] float32 scheduler.timesteps (Euler's are fractional)
  CASE.sigmas       [n + 1] the Karras-style sigmas (Euler, DPM-Solver)
  CASE.init_noise_sigma [1]
  CASE.model_in     [n, 96] scale_model_input's output at every step
  CASE.traj         [n + 1, 96] latents before the first step and after each
  i2i.CASE.*        img2img (StableDiffusionImg2ImgPipeline.get_timesteps at
                    strength 0.6, set_begin_index, add_noise of x0 with
                    noise[0] at the start timestep, then the loop from there):
                    .start (the first index), .noised, .traj
Metadata: CASE.config, CASE.steps, "cases", "i2i_cases", diffusers_version.

Made with diffusers 0.42.1 (torch 2.15, numpy 2.4, scipy 1.17 for LMS):
  /work/venv-torch/bin/python scripts/make_sd_scheduler_fixtures.py
"""
import json
import os

import numpy as np
import torch
import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler)

from fixture_io import write_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "sd_schedulers.safetensors")
SHAPE = (2, 4, 4, 3)
MAX_STEPS = 24
CLASSES = {c.__name__: c for c in [PNDMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                   LMSDiscreteScheduler, DPMSolverMultistepScheduler, DDIMScheduler]}
# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}
# stabilityai/stable-diffusion-2-1 (768, v_prediction) scheduler/scheduler_config.json
SD21 = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def config(base, cls, **options):
    return {**base, "_class_name": cls, **options}


def run(scheduler, timesteps, start, latents, w, noise):
    """The pipeline's loop from index `start`; returns model inputs and latents."""
    ins, traj = [], [latents.clone()]
    for k, t in enumerate(timesteps):
        euler_a_module.randn_tensor = lambda *a, k=k, **kw: noise[start + k].reshape(SHAPE).clone()
        model_in = scheduler.scale_model_input(latents, t)
        tt = torch.tensor(float(t), dtype=torch.float32) / 1000
        eps = 0.5 * model_in + w[start + k].reshape(SHAPE) * tt
        latents = scheduler.step(eps, t, latents).prev_sample
        ins.append(model_in.reshape(-1).clone())
        traj.append(latents.clone())
    return torch.stack(ins), torch.stack(traj).reshape(len(traj), -1)


def case(tensors, meta, tag, cfg, steps, x, w, noise):
    s = CLASSES[cfg["_class_name"]].from_config(cfg)
    s.set_timesteps(steps)
    assert len(s.timesteps) <= MAX_STEPS, tag
    latents = x.reshape(SHAPE) * s.init_noise_sigma
    ins, traj = run(s, s.timesteps, 0, latents, w, noise)
    assert torch.isfinite(traj).all(), tag
    tensors[f"{tag}.timesteps"] = s.timesteps.to(torch.float32)
    if hasattr(s, "sigmas") and torch.is_tensor(s.sigmas):
        tensors[f"{tag}.sigmas"] = s.sigmas.to(torch.float32)
    tensors[f"{tag}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)], dtype=torch.float32)
    tensors[f"{tag}.model_in"] = ins
    tensors[f"{tag}.traj"] = traj
    meta[f"{tag}.config"] = json.dumps(cfg)
    meta[f"{tag}.steps"] = steps


def img2img_case(tensors, meta, tag, cfg, steps, strength, x0, w, noise):
    """StableDiffusionImg2ImgPipeline: get_timesteps, set_begin_index, add_noise, the loop."""
    s = CLASSES[cfg["_class_name"]].from_config(cfg)
    s.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = s.timesteps[t_start * s.order:]
    if hasattr(s, "set_begin_index"):
        s.set_begin_index(t_start * s.order)
    noised = s.add_noise(x0.reshape(SHAPE), noise[0].reshape(SHAPE), timesteps[:1])
    _, traj = run(s, timesteps, t_start, noised, w, noise)
    assert torch.isfinite(traj).all(), tag
    tensors[f"i2i.{tag}.start"] = torch.tensor([t_start], dtype=torch.int32)
    tensors[f"i2i.{tag}.noised"] = noised.reshape(-1)
    tensors[f"i2i.{tag}.traj"] = traj
    meta[f"i2i.{tag}.config"] = json.dumps(cfg)
    meta[f"i2i.{tag}.steps"] = steps
    meta[f"i2i.{tag}.strength"] = strength


def main():
    torch.manual_seed(20261207)
    numel = int(np.prod(SHAPE))
    x = torch.randn(1, numel)
    w = torch.randn(MAX_STEPS, numel)
    noise = torch.randn(MAX_STEPS, numel)
    x0 = torch.randn(1, numel)
    tensors = {"x": x, "w": w, "noise": noise, "x0": x0}
    meta = {"diffusers_version": diffusers.__version__}
    cases = [
        # PNDM (PLMS): SD-1.5 as shipped, SD-2.1's v_prediction, the other spacings, PRK
        ("pndm_sd15", SD15, 10),
        ("pndm_sd15_1", SD15, 1),
        ("pndm_sd15_2", SD15, 2),
        ("pndm_sd21_v", config(SD21, "PNDMScheduler"), 8),
        ("pndm_linspace", config(SD15, "PNDMScheduler", timestep_spacing="linspace"), 7),
        ("pndm_trailing_v", config(SD21, "PNDMScheduler", timestep_spacing="trailing"), 9),
        ("pndm_alpha_one", config(SD15, "PNDMScheduler", set_alpha_to_one=True), 6),
        ("pndm_prk", config(SD15, "PNDMScheduler", skip_prk_steps=False), 8),
        ("pndm_prk_v_linear", config(SD21, "PNDMScheduler", skip_prk_steps=False, beta_schedule="linear",
                                     beta_start=0.0001, beta_end=0.02), 10),
        # Euler: linspace (fractional timesteps), leading (init_noise_sigma sqrt(s^2 + 1)), trailing
        ("euler_sd15", config(SD15, "EulerDiscreteScheduler"), 10),
        ("euler_sd15_leading", config(SD15, "EulerDiscreteScheduler", timestep_spacing="leading"), 10),
        ("euler_sd21_v_trailing", config(SD21, "EulerDiscreteScheduler", timestep_spacing="trailing"), 9),
        ("euler_karras", config(SD15, "EulerDiscreteScheduler", use_karras_sigmas=True), 12),
        ("euler_karras_v_leading", config(SD21, "EulerDiscreteScheduler", use_karras_sigmas=True,
                                          timestep_spacing="leading", final_sigmas_type="sigma_min"), 11),
        ("euler_sigma_min", config(SD15, "EulerDiscreteScheduler", final_sigmas_type="sigma_min"), 7),
        # Euler ancestral: the noise of step k is noise[k]
        ("euler_a_sd15", config(SD15, "EulerAncestralDiscreteScheduler"), 15),
        ("euler_a_sd21_v_leading", config(SD21, "EulerAncestralDiscreteScheduler", timestep_spacing="leading"), 9),
        ("euler_a_trailing", config(SD15, "EulerAncestralDiscreteScheduler", timestep_spacing="trailing"), 13),
        # LMS (order 4; its coefficients integrated by scipy)
        ("lms_sd15", config(SD15, "LMSDiscreteScheduler"), 12),
        ("lms_sd21_v_leading", config(SD21, "LMSDiscreteScheduler", timestep_spacing="leading"), 9),
        ("lms_karras", config(SD15, "LMSDiscreteScheduler", use_karras_sigmas=True), 10),
        ("lms_trailing_2", config(SD15, "LMSDiscreteScheduler", timestep_spacing="trailing"), 2),
        # DPM++ 2M Karras (lower_order_final under 15 steps, final sigma zero: diffusers' defaults)
        ("dpm_karras_sd15", config(SD15, "DPMSolverMultistepScheduler", use_karras_sigmas=True), 12),
        ("dpm_karras_sd15_20", config(SD15, "DPMSolverMultistepScheduler", use_karras_sigmas=True), 20),
        ("dpm_karras_sd21_v", config(SD21, "DPMSolverMultistepScheduler", use_karras_sigmas=True), 16),
        ("dpm_sd15", config(SD15, "DPMSolverMultistepScheduler"), 10),
        # SD-2.1's own DDIM
        ("ddim_sd21_v", SD21, 10),
    ]
    for tag, cfg, steps in cases:
        case(tensors, meta, tag, cfg, steps, x, w, noise)
    meta["cases"] = ",".join(c[0] for c in cases)
    i2i = [("pndm", SD15, 10, 0.6), ("pndm_v", config(SD21, "PNDMScheduler"), 12, 0.75),
           ("euler", config(SD15, "EulerDiscreteScheduler"), 10, 0.6),
           ("euler_karras", config(SD15, "EulerDiscreteScheduler", use_karras_sigmas=True), 10, 0.5),
           ("euler_a", config(SD15, "EulerAncestralDiscreteScheduler"), 10, 0.6),
           ("lms", config(SD15, "LMSDiscreteScheduler"), 10, 0.6),
           ("dpm_karras", config(SD15, "DPMSolverMultistepScheduler", use_karras_sigmas=True), 10, 0.6),
           ("ddim_v", SD21, 10, 0.3)]
    for tag, cfg, steps, strength in i2i:
        img2img_case(tensors, meta, tag, cfg, steps, strength, x0, w, noise)
    meta["i2i_cases"] = ",".join(c[0] for c in i2i)
    write_safetensors(OUT, tensors, meta)
    print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
