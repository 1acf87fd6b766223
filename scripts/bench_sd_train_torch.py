#!/usr/bin/env python3
"""PyTorch reference for `scripts/bench.sh sd-train`: the training step of diffusers'
train_text_to_image.py (--mode full: full fine-tuning of the UNet; full-ckpt: with
unet.enable_gradient_checkpointing()) or train_text_to_image_lora.py (--mode lora: peft LoRA of
rank 4, alpha 4, on to_k/to_q/to_v/to_out.0, only the adapters in AdamW) on a
StableDiffusionPipeline folder.

As the script steps, batch --batch: the frozen VAE's latent_dist.sample() * scaling_factor of a
random image and the frozen text encoder's embeds of a caption (both outside the timed part,
as diffc caches them), then DDPMScheduler.add_noise at random timesteps, UNet2DConditionModel
forward, F.mse_loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad; f32 on the CPU.
Times --steps steps after one warm-up step and prints one line:
  bench sd-train case=SIZE-MODE size=HxW batch=N step_s=X (the best step) median_step_s=X peak_mb=M
  torch=V diffusers=V threads=T
Run: /work/venv-torch/bin/python scripts/bench_sd_train_torch.py --model DIR --size 256 --threads 16
"""
import argparse
import resource
import statistics
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=["full", "lora", "full-ckpt"], default="full")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None)
    sched = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    unet = pipe.unet
    unet.train()
    with torch.no_grad():
        images = torch.rand(a.batch, 3, a.size, a.size) * 2 - 1
        latents = pipe.vae.encode(images).latent_dist.sample() * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(["a photograph of an astronaut riding a horse"] * a.batch, padding="max_length",
                             max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
    if a.mode == "lora":
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if a.mode == "full-ckpt":
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,))
        pred = unet(sched.add_noise(latents, noise, t), t, text).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench sd-train case={a.size}-{a.mode} size={a.size}x{a.size} batch={a.batch} step_s={min(times):.3f} "
          f"median_step_s={statistics.median(times):.3f} peak_mb={peak_mb:.0f} torch={torch.__version__} "
          f"diffusers={diffusers.__version__} threads={a.threads}")


if __name__ == "__main__":
    main()
