#!/usr/bin/env python3
"""A Stable Diffusion pipeline folder with random weights, for benchmarks:
StableDiffusionPipeline.save_pretrained of an SD-1.5-sized (or SD-2.x-sized)
UNet2DConditionModel, AutoencoderKL and CLIPTextModel with the real CLIP BPE
vocabulary, and SD-1.5's PNDM scheduler config. Nothing here is downloaded
from a model hub: the vocabulary is the one the open_clip_torch wheel on PyPI
ships (make_clip_tokenizer_fixtures.real_merges fetches it), the weights are
torch's default initialisation under a fixed seed.

Made for diffusers 0.42, transformers 5.25, torch 2.15.

usage: make_sd_pipeline.py --out DIR [--size sd15|sd2] [--dtype f32|f16]
"""
import argparse
import os

import torch
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from make_clip_tokenizer_fixtures import EOS, real_merges, real_vocab, sd_configs, write_vocab_merges


def write_tokenizer(folder, sd2):
    """The real CLIP vocabulary in a pipeline's tokenizer/ folder, as the hub's SD repos have it."""
    os.makedirs(folder, exist_ok=True)
    header, merges = real_merges()
    write_vocab_merges(folder, real_vocab(merges), header, merges)
    sd_configs(folder, "!" if sd2 else EOS)
    return CLIPTokenizer.from_pretrained(folder)


def components(size):
    """(unet, vae, text_encoder) configs of SD-1.5 or SD-2.x (768, v-prediction)."""
    sd2 = size == "sd2"
    unet = dict(sample_size=96 if sd2 else 64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=1024 if sd2 else 768,
                attention_head_dim=(5, 10, 20, 20) if sd2 else 8,
                use_linear_projection=sd2, upcast_attention=sd2)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), sample_size=768 if sd2 else 512,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=1024 if sd2 else 768,
                          intermediate_size=4096 if sd2 else 3072, num_hidden_layers=23 if sd2 else 12,
                          num_attention_heads=16 if sd2 else 12, max_position_embeddings=77,
                          hidden_act="gelu" if sd2 else "quick_gelu", projection_dim=512 if sd2 else 768,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)  # as the hub's configs
    return unet, vae, text


def hub_text_names(folder):
    """The text encoder's weights under the names the hub's SD checkpoints
    use ("text_model.encoder..."): transformers 5 saves them without the
    "text_model." prefix, which stable-diffusion.cpp does not recognise."""
    path = os.path.join(folder, "text_encoder", "model.safetensors")
    weights = load_file(path)
    save_file({k if k.startswith("text_model.") else "text_model." + k: v for k, v in weights.items()}, path,
              metadata={"format": "pt"})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=["sd15", "sd2"], default="sd15")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    a = p.parse_args()
    torch.manual_seed(0)
    unet_cfg, vae_cfg, text_cfg = components(a.size)
    tokenizer = write_tokenizer(os.path.join(a.out, "tokenizer"), a.size == "sd2")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                              prediction_type="v_prediction" if a.size == "sd2" else "epsilon")
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(text_cfg),
                                   tokenizer=tokenizer, unet=UNet2DConditionModel(**unet_cfg),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if a.dtype == "f16":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(a.out, safe_serialization=True)
    hub_text_names(a.out)
    print(f"wrote {a.out} ({a.size}, {a.dtype})")


if __name__ == "__main__":
    main()
