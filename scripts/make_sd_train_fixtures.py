#!/usr/bin/env python3
"""One training step of diffusers' train_text_to_image.py on tests/fixtures/sd_tiny, for
tests/test_train_sd.c; and (--check OUT) diffusers loading what `diffc train` wrote.

The step, as the script computes it for a batch of two images:
  text = text_encoder(tokenizer(captions, padded to 77))[0]        (frozen)
  dist = vae.encode(images).latent_dist                            (frozen)
  latents = (dist.mean + dist.std * eps) * scaling_factor          (dist.sample() with given eps)
  noisy = scheduler.add_noise(latents, noise, timesteps)           (DDPMScheduler of the folder's config)
  loss = mse(unet(noisy, timesteps, text).sample, noise)           (epsilon; and v_prediction)
  loss.backward(); AdamW(lr 1e-3, betas (0.9, 0.999), wd 1e-2, eps 1e-8).step()
Recorded in tests/fixtures/sd_train_step.safetensors: the images (NHWC in [-1, 1]), eps,
noise (NHWC), timesteps, the text embeds, the latent mean and std (NHWC), for each
prediction type the loss, the gradients of the UNet parameters in GRAD_NAMES and their
values after the AdamW step (PyTorch layout, prefixed "<type>.grad." / "<type>.after."),
captions and settings in the metadata.

--check OUT [LORA]: StableDiffusionPipeline.from_pretrained(OUT) (a folder `diffc train` wrote;
with LORA, the pipeline OUT with load_lora_weights(LORA), what `diffc train --lora-rank` wrote)
against `diffc sample --model OUT` from the same initial latents (diffc's Philox draw, redone
here in numpy and passed as latents=): prints the largest pixel difference, exit status 1
beyond 2/255 (developer-run; needs build/diffc).

Made with diffusers 0.42.1, transformers 5.25, torch 2.15.
Run: /work/venv-torch/bin/python scripts/make_sd_train_fixtures.py [--check OUT [LORA]]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import write_safetensors  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SD = os.path.join(ROOT, "tests", "fixtures", "sd_tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "sd_train_step.safetensors")
CAPTIONS = ["a red cube", "two blue balls on a table"]
TIMESTEPS = [137, 802]
LR, BETAS, WD, EPS = 1e-3, (0.9, 0.999), 1e-2, 1e-8
GRAD_NAMES = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "mid_block.resnets.0.conv1.weight",
    "up_blocks.1.attentions.0.proj_out.bias",
    "conv_out.weight",
    "conv_out.bias",
]


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def step(pipe, prediction_type, images, eps, noise, timesteps):
    """The loss, the gradients and the weights after one AdamW step of a fresh copy of the UNet."""
    unet = type(pipe.unet).from_pretrained(os.path.join(SD, "unet"))
    sched = DDPMScheduler.from_pretrained(SD, subfolder="scheduler", prediction_type=prediction_type)
    with torch.no_grad():
        ids = pipe.tokenizer(CAPTIONS, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
        dist = pipe.vae.encode(images).latent_dist
        latents = (dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor
    noisy = sched.add_noise(latents, noise, timesteps)
    target = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, timesteps)
    pred = unet(noisy, timesteps, text).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    loss.backward()
    params = dict(unet.named_parameters())
    grads = {n: params[n].grad.detach().clone() for n in GRAD_NAMES}
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, betas=BETAS, weight_decay=WD, eps=EPS)
    opt.step()
    after = {n: params[n].detach().clone() for n in GRAD_NAMES}
    return loss.item(), grads, after, text, dist


def make():
    torch.manual_seed(17)
    pipe = StableDiffusionPipeline.from_pretrained(SD, safety_checker=None)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    eps = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor(TIMESTEPS, dtype=torch.long)
    tensors = {"images": nhwc(images), "eps": nhwc(eps), "noise": nhwc(noise),
               "timesteps": timesteps.to(torch.int32)}
    meta = {"captions": "|".join(CAPTIONS), "lr": LR, "beta1": BETAS[0], "beta2": BETAS[1],
            "weight_decay": WD, "epsilon": EPS}
    for ptype in ["epsilon", "v_prediction"]:
        loss, grads, after, text, dist = step(pipe, ptype, images, eps, noise, timesteps)
        tensors[ptype + ".loss"] = torch.tensor([loss])
        for n in GRAD_NAMES:
            tensors[f"{ptype}.grad.{n}"] = grads[n]
            tensors[f"{ptype}.after.{n}"] = after[n]
    tensors["text"] = text
    tensors["mean"] = nhwc(dist.mean)
    tensors["std"] = nhwc(dist.std)
    write_safetensors(OUT, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, meta)
    print(f"wrote {OUT}")


def philox_normal(seed, stream, n):
    """Elements 0..n-1 of diffc's standard normals of (seed, stream) (autograd/rng.h: Philox4x32-10,
    counter (block, stream), key seed; Box-Muller of each pair of words, in float32)."""
    mask = np.uint64(0xFFFFFFFF)
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    c = [blocks & mask, blocks >> np.uint64(32), np.full_like(blocks, stream & 0xFFFFFFFF),
         np.full_like(blocks, stream >> 32)]
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
             p0 & mask]
    words = np.stack(c, axis=1)  # [blocks, 4]
    z = np.empty((len(blocks), 4), dtype=np.float32)
    for pair in range(2):
        wa, wb = words[:, 2 * pair], words[:, 2 * pair + 1]
        u1 = ((wa >> np.uint64(8)) + np.uint64(1)).astype(np.float32) * np.float32(2.0 ** -24)
        u2 = (wb >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)
        radius = np.sqrt(np.float32(-2) * np.log(u1))
        angle = np.float32(6.28318530717958647692) * u2
        z[:, 2 * pair], z[:, 2 * pair + 1] = radius * np.cos(angle), radius * np.sin(angle)
    return z.reshape(-1)[:n]


def check(out, lora=None):
    """diffusers' images of the folder `out` (a folder `diffc train` wrote; or, with `lora`, the
    pipeline `out` with load_lora_weights(lora), a folder `diffc train --lora-rank` wrote) against
    `diffc sample`'s, from the same initial latents: diffc's draw for image 0 of seed 0
    (pipeline/samplers.h), which the pipeline takes as latents=."""
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    if lora:
        pipe.load_lora_weights(lora)
    size = pipe.vae.config.sample_size
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    c, side = pipe.unet.config.in_channels, size // f
    latents = torch.from_numpy(philox_normal(0, 0, side * side * c).reshape(1, side, side, c)).permute(0, 3, 1, 2)
    theirs = pipe(["a red cube"], latents=latents, num_inference_steps=4, guidance_scale=7.5, height=size,
                  width=size, output_type="np").images[0]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(ROOT, "build", "diffc"), "sample", "--model", out, "--prompt", "a red cube",
                        "--seed", "0", "--num-images", "1", "--num-inference-steps", "4", "--guidance-scale", "7.5",
                        "--height", str(size), "--width", str(size), "--device", "cpu", "--output-dir", tmp]
                       + (["--lora", lora] if lora else []),
                       check=True, stdout=subprocess.DEVNULL)
        ours = np.asarray(Image.open(os.path.join(tmp, "00000.png")), dtype=np.float32) / 255
    diff = float(np.abs(ours - theirs).max())
    print(f"{lora or out}: diffusers loads it; largest difference from diffc's image {diff:.4f} (8-bit: 1/255 = 0.0039)")
    return 0 if diff <= 2 / 255 else 1


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--check":
        sys.exit(check(*sys.argv[2:]))
    make()
