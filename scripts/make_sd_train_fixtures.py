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

--check OUT: StableDiffusionPipeline.from_pretrained(OUT) (a folder `diffc train` wrote):
every component loads, the UNet holds the file's weights, and it denoises fixed latents
(developer-run). diffc's own images from given latents are checked against diffusers on the
same pipeline code by tests/test_sd_pipeline.c; `diffc sample` takes no --latents, so the
two are not compared image for image here.

Made with diffusers 0.42.1, transformers 5.25, torch 2.15.
Run: /work/venv-torch/bin/python scripts/make_sd_train_fixtures.py [--check OUT]
"""
import os
import sys

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

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


def check(out):
    """diffusers reads the folder `out`: every component loads, the UNet's weights are the file's, and
    the pipeline denoises fixed latents to a finite image (saved as OUT/diffusers_check.png)."""
    from safetensors.torch import load_file
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    saved = load_file(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))
    state = pipe.unet.state_dict()
    worst = max((state[k].float() - v.float()).abs().max().item() for k, v in saved.items())
    size = pipe.vae.config.sample_size
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    torch.manual_seed(3)
    latents = torch.randn(1, pipe.unet.config.in_channels, size // f, size // f)
    image = pipe(["a red cube"], latents=latents, num_inference_steps=4, guidance_scale=7.5, height=size,
                 width=size, output_type="pil").images[0]
    image.save(os.path.join(out, "diffusers_check.png"))
    print(f"{out}: loaded; UNet weights differ from the file by {worst:g}; image {image.size} saved")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    make()
