#!/usr/bin/env python3
"""Reference runs of diffusers' StableDiffusionPipeline for tests/test_sd_pipeline.c.

Two tiny random-weight pipelines (CLIP text encoder of 2 layers, a
UNet2DConditionModel of two levels, an AutoencoderKL of two levels: 16x16
images from 8x8 latents, the tiny CLIP tokenizer of tests/fixtures/clip_tiny)
saved with save_pretrained:
  sd_tiny   SD-1.x-like: quick_gelu, conv proj_in/out, SD-1.5's PNDM scheduler
  sd_tiny2  SD-2.x-like: gelu, linear proj_in/out, per-level heads,
            upcast_attention, padding with "!", SD-2.1-v's DDIM scheduler
            (v_prediction)
Then, from given initial latents (the pipeline's `latents=`, so no random
draw is involved), whole text-to-image runs:
  sd_tiny   pndm   the folder's scheduler, 4 steps, guidance 7.5, two prompts
            ddim   DDIMScheduler.from_config, 4 steps, a negative prompt
            euler  EulerDiscreteScheduler.from_config, 5 steps, guidance 1 (no CFG)
            dpm    DPMSolverMultistepScheduler.from_config, Karras sigmas, 4 steps, clip_skip 1
  sd_tiny2  ddim   the folder's scheduler (v_prediction), 4 steps, guidance 7.5
            euler  EulerDiscreteScheduler.from_config (v_prediction), 4 steps
each recording its prompts, settings, the initial latents and the images
(NHWC in [0, 1], as the pipeline's output_type "np") in
tests/fixtures/<pipeline>_runs.safetensors, settings in its metadata.

Made with diffusers 0.42.1, transformers 5.25, torch 2.15.
Run: /work/venv-torch/bin/python scripts/make_sd_pipeline_fixtures.py
"""
import json
import os

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

RUNS_SD1 = [
    dict(name="pndm", scheduler=None, steps=4, guidance=7.5, prompts=["a red cube", "two blue balls"],
         negative=None, clip_skip=None),
    dict(name="ddim", scheduler=DDIMScheduler, steps=4, guidance=7.5, prompts=["a green ring on grass"],
         negative="blurry", clip_skip=None),
    dict(name="euler", scheduler=EulerDiscreteScheduler, steps=5, guidance=1.0, prompts=["a cat"],
         negative=None, clip_skip=None),
    dict(name="dpm", scheduler=DPMSolverMultistepScheduler, steps=4, guidance=5.0,
         prompts=["an old photo of a house"], negative=None, clip_skip=1, karras=True),
]

RUNS_SD2 = [
    dict(name="ddim", scheduler=None, steps=4, guidance=7.5, prompts=["a red cube on a table"],
         negative="dark", clip_skip=None),
    dict(name="euler", scheduler=EulerDiscreteScheduler, steps=4, guidance=4.0, prompts=["two birds"],
         negative=None, clip_skip=None),
]


def make_pipeline(sd2):
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "clip_tiny"), **({"pad_token": "!"} if sd2 else {}))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        hidden_act="gelu" if sd2 else "quick_gelu",
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=2, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=4, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2,
                                upcast_attention=sd2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(8, 16), norm_num_groups=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    with torch.no_grad():  # torch's default init leaves the outputs tiny: make the runs move
        for p in list(unet.parameters()) + list(vae.parameters()) + list(text.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 set_alpha_to_one=False)
    scheduler = DDIMScheduler(**betas, clip_sample=False, prediction_type="v_prediction") if sd2 else \
        PNDMScheduler(**betas, skip_prk_steps=True)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def prompt_embeds(pipe, texts, clip_skip):
    """What encode_prompt computes for clip_skip k: final_layer_norm of
    hidden_states[-(k + 1)]. Done here because diffusers 0.42 reaches it
    through text_encoder.text_model, which transformers 5's CLIPTextModel no
    longer has."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    out = pipe.text_encoder(ids, output_hidden_states=True)
    return pipe.text_encoder.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


def record(name, sd2, runs):
    out = os.path.join(ROOT, name)
    make_pipeline(sd2).save_pretrained(out, safe_serialization=True)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler.config
    tensors, meta = {}, {}
    gen = torch.Generator().manual_seed(1)
    for run in runs:
        extra = {"use_karras_sigmas": True} if run.get("karras") else {}
        pipe.scheduler = (run["scheduler"] or type(pipe.scheduler)).from_config(base, **extra)
        n = len(run["prompts"])
        latents = torch.randn(n, 4, 8, 8, generator=gen)
        negative = [run["negative"] or ""] * n
        with torch.no_grad():
            texts = dict(prompt=run["prompts"], negative_prompt=negative if run["negative"] else None)
            if run["clip_skip"]:
                texts = dict(prompt_embeds=prompt_embeds(pipe, run["prompts"], run["clip_skip"]),
                             negative_prompt_embeds=prompt_embeds(pipe, negative, run["clip_skip"]))
            final = pipe(**texts, num_inference_steps=run["steps"], guidance_scale=run["guidance"],
                         latents=latents.clone(), height=16, width=16, output_type="latent").images
            images = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
            images = (images / 2 + 0.5).clamp(0, 1)
        tensors[f"{run['name']}.latents"] = latents.permute(0, 2, 3, 1).contiguous()
        tensors[f"{run['name']}.images"] = images.permute(0, 2, 3, 1).contiguous()
        meta[run["name"]] = json.dumps({k: v for k, v in run.items() if k != "scheduler"} |
                                       {"scheduler": type(pipe.scheduler).__name__})
    save_file(tensors, os.path.join(ROOT, f"{name}_runs.safetensors"), metadata=meta)
    print("wrote", out, f"and {name}_runs.safetensors")


def main():
    record("sd_tiny", False, RUNS_SD1)
    record("sd_tiny2", True, RUNS_SD2)


if __name__ == "__main__":
    main()
