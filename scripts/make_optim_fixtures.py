#!/usr/bin/env python3
"""Reference values for tests/test_optim.c, from PyTorch and diffusers.

Writes tests/fixtures/optim_adamw.safetensors:
  adamw.*   torch.optim.AdamW (non-default betas, eps, weight decay) for a few
            steps on a small parameter, its learning rate driven by diffusers'
            cosine schedule with warmup; the parameter after every step and the
            final moments.
  clip.*    torch.nn.utils.clip_grad_norm_ on one gradient.
  lr.NAME   diffusers.optimization.get_scheduler(NAME) learning rates, step by
            step, for constant, constant_with_warmup, linear and cosine.
  ema_*.*   diffusers.training_utils.EMAModel: decay and shadow after every step,
            with and without EMA warmup.
Settings are in __metadata__. The file is written by hand (json + struct), so
the safetensors package is not needed.

Needs torch and diffusers. With Debian's python3-torch (1.13):
  python3 -m venv --system-site-packages /tmp/venv
  /tmp/venv/bin/pip install "diffusers==0.27.2" "huggingface_hub<0.26"
  /tmp/venv/bin/python scripts/make_optim_fixtures.py
(get_decay and the schedule lambdas are unchanged through diffusers 0.42.)
"""
import os

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from fixture_io import write_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim_adamw.safetensors")


def adamw(tensors, meta):
    n, steps, lr = 37, 6, 0.05
    betas, eps, wd = (0.8, 0.95), 1e-4, 0.1
    warmup, total = 2, 8
    p = torch.nn.Parameter(torch.randn(n))
    tensors["adamw.param.0"] = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    sched = get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for k in range(1, steps + 1):
        # gradients over several magnitudes, so eps and the moments all matter
        g = torch.randn(n) * torch.logspace(-4, 1, n)[torch.randperm(n)]
        p.grad = g.clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        tensors[f"adamw.grad.{k}"] = g
        tensors[f"adamw.param.{k}"] = p.detach().clone()
    state = opt.state[p]
    tensors["adamw.exp_avg"] = state["exp_avg"].clone()
    tensors["adamw.exp_avg_sq"] = state["exp_avg_sq"].clone()
    tensors["adamw.lr"] = torch.tensor(lrs, dtype=torch.float64)
    meta.update({"adamw.steps": steps, "adamw.lr": lr, "adamw.beta1": betas[0],
                 "adamw.beta2": betas[1], "adamw.eps": eps, "adamw.weight_decay": wd,
                 "adamw.warmup": warmup, "adamw.total": total})


def clip(tensors, meta):
    max_norm = 5.0
    p = torch.nn.Parameter(torch.zeros(53))
    p.grad = torch.randn(53) * 3.0
    tensors["clip.grad"] = p.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_([p], max_norm)
    tensors["clip.clipped"] = p.grad.clone()
    tensors["clip.norm"] = norm.reshape(1).to(torch.float32)
    meta["clip.max_norm"] = max_norm


def schedules(tensors, meta):
    base, warmup, total, steps = 3e-4, 3, 10, 13  # a few steps past the end, too
    for name in ["constant", "constant_with_warmup", "linear", "cosine"]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
        sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        tensors[f"lr.{name}"] = torch.tensor(lrs, dtype=torch.float64)
    meta.update({"lr.base": base, "lr.warmup": warmup, "lr.total": total, "lr.steps": steps})


def ema(tensors, meta, tag, steps, **config):
    n = 19
    p = torch.nn.Parameter(torch.randn(n))
    tensors[f"{tag}.param.0"] = p.detach().clone()
    model = EMAModel([p], **config)
    params, shadows, decays = [], [], []
    for _ in range(steps):
        with torch.no_grad():
            p.add_(torch.randn(n) * 0.5)
        model.step([p])
        params.append(p.detach().clone())
        shadows.append(model.shadow_params[0].clone())
        decays.append(model.cur_decay_value)
    tensors[f"{tag}.param"] = torch.stack(params)  # [steps, n] the weights at each step
    tensors[f"{tag}.shadow"] = torch.stack(shadows)  # [steps, n] the shadow after it
    tensors[f"{tag}.decay"] = torch.tensor(decays, dtype=torch.float64)
    meta.update({f"{tag}.{k}": v for k, v in config.items()})
    meta[f"{tag}.steps"] = steps


def main():
    torch.manual_seed(20240611)
    tensors, meta = {}, {}
    adamw(tensors, meta)
    clip(tensors, meta)
    schedules(tensors, meta)
    ema(tensors, meta, "ema_warmup", 12, decay=0.999, min_decay=0.0, update_after_step=2,
        use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    ema(tensors, meta, "ema_plain", 20, decay=0.6, min_decay=0.3, update_after_step=0,
        use_ema_warmup=False)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    write_safetensors(OUT, tensors, meta)
    print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
