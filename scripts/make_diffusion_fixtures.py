#!/usr/bin/env python3
"""Reference values for tests/test_diffusion.c, from diffusers' DDPMScheduler.

Writes into tests/fixtures/:
  diffusion.safetensors
    TAG.betas, TAG.alphas_cumprod   DDPMScheduler(...).betas / .alphas_cumprod (F32 [T])
                                    for each schedule below; its settings are in
                                    __metadata__ as TAG.beta_schedule, TAG.beta_start,
                                    TAG.beta_end, TAG.num_train_timesteps
    x0, noise, model_output         F32 [7, 4, 3, 2] random inputs
    t                               I32 [7] timesteps, 0 and T - 1 among them
    TAG.add_noise                   add_noise(x0, noise, t)      (main schedules)
    TAG.velocity                    get_velocity(x0, noise, t)   (main schedules)
    TAG.loss.PRED[.gamma5]          F32 [1] the loss of diffusers' training examples
                                    for prediction type PRED, without and with
                                    min-SNR-gamma 5 (see loss() below)
  diffusion_scheduler_config.json   DDPMScheduler.save_config of a scaled_linear,
                                    v_prediction scheduler, as diffusers writes it

Written by hand (json + struct); no safetensors package needed. Made with
torch 2.15.0 and diffusers 0.42.1 from PyPI:
  python3 -m venv /tmp/dvenv
  /tmp/dvenv/bin/pip install torch==2.15.0 diffusers==0.42.1
  /tmp/dvenv/bin/python scripts/make_diffusion_fixtures.py
"""
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from fixture_io import write_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

MAIN = {  # the schedules users meet: DDPM's default, Stable Diffusion's, the cosine one
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}
ODD = {  # odd lengths: linspace's two halves, a schedule of one step
    "linear_37": dict(beta_schedule="linear", beta_start=0.0005, beta_end=0.04, num_train_timesteps=37),
    "scaled_linear_1": dict(beta_schedule="scaled_linear", beta_start=0.001, beta_end=0.02, num_train_timesteps=1),
    "squaredcos_cap_v2_11": dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=11),
}
GAMMA = 5.0


def loss(sched, pred_type, model_output, x0, noise, t, gamma):
    """The loss of diffusers' examples: train_text_to_image.py for epsilon and
    v_prediction (min-SNR weights from compute_snr), train_unconditional.py for
    sample (x0 MSE weighted by snr = acp / (1 - acp)). The examples have no
    min-SNR for sample; the Min-SNR paper's x0 weight, min(snr, gamma), is used."""
    if pred_type == "epsilon":
        target = noise
    elif pred_type == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    else:
        target = x0
    per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=list(range(1, len(per_sample.shape))))
    if gamma is None:
        if pred_type == "sample":
            acp = sched.alphas_cumprod[t]
            return (per_sample * (acp / (1 - acp))).mean()
        return F.mse_loss(model_output.float(), target.float(), reduction="mean")
    snr = compute_snr(sched, t)
    w = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if pred_type == "epsilon":
        w = w / snr
    elif pred_type == "v_prediction":
        w = w / (snr + 1)
    return (per_sample * w).mean()


def schedules(tensors, meta):
    for tag, cfg in {**MAIN, **ODD}.items():
        s = DDPMScheduler(**cfg)
        tensors[f"{tag}.betas"] = s.betas
        tensors[f"{tag}.alphas_cumprod"] = s.alphas_cumprod
        for key in ["beta_schedule", "beta_start", "beta_end", "num_train_timesteps"]:
            meta[f"{tag}.{key}"] = s.config[key]


def noising(tensors):
    shape, n = (7, 4, 3, 2), 7
    x0, noise, model_output = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 1000, (n,))
    t[1], t[4] = 0, 999
    tensors.update(x0=x0, noise=noise, model_output=model_output, t=t.to(torch.int32))
    for tag, cfg in MAIN.items():
        s = DDPMScheduler(**cfg)
        tensors[f"{tag}.add_noise"] = s.add_noise(x0, noise, t)
        tensors[f"{tag}.velocity"] = s.get_velocity(x0, noise, t)
        for pred in ["epsilon", "v_prediction", "sample"]:
            tensors[f"{tag}.loss.{pred}"] = loss(s, pred, model_output, x0, noise, t, None).reshape(1)
            tensors[f"{tag}.loss.{pred}.gamma5"] = loss(s, pred, model_output, x0, noise, t, GAMMA).reshape(1)


def scheduler_config(path):
    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      prediction_type="v_prediction", clip_sample=False, num_train_timesteps=500)
    with tempfile.TemporaryDirectory() as d:
        s.save_config(d)
        with open(os.path.join(d, "scheduler_config.json")) as f:
            text = f.read()
    with open(path, "w") as f:
        f.write(text)


def main():
    torch.manual_seed(20240612)
    tensors, meta = {}, {"gamma": GAMMA}
    schedules(tensors, meta)
    noising(tensors)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "diffusion.safetensors")
    write_safetensors(path, tensors, meta)
    scheduler_config(os.path.join(OUT, "diffusion_scheduler_config.json"))
    print(f"wrote {os.path.normpath(path)}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
