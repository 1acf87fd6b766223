#!/usr/bin/env python3
"""Reference LoRA files and runs of diffusers + PEFT for tests/test_lora.c.

On the tiny random pipeline tests/fixtures/sd_tiny (scripts/make_sd_pipeline_fixtures.py):

  sd_tiny_lora/pytorch_lora_weights.safetensors
      a random LoRA (rank 4, lora_alpha 8, B non-zero) on the UNet's to_q,
      to_k, to_v, to_out.0 and the text encoder's q/k/v/out_proj, saved by
      StableDiffusionPipeline.save_lora_weights with PEFT's names and the
      adapter metadata (LoraConfig.to_dict(), as diffusers' training scripts
      pass it)
  sd_tiny_lora_old.safetensors
      the same weights under the older diffusers names (lora.down / lora.up,
      lora_linear_layer.down / up, attention processors' to_q_lora) with an
      ".alpha" scalar per module and no metadata
  sd_tiny_lora_runs.safetensors
      load_lora_weights(sd_tiny_lora), then a text-to-image run from given
      latents with cross_attention_kwargs {"scale": 0.7} (the pipeline's PNDM,
      4 steps, guidance 7.5, two prompts): latents and images (NHWC, [0, 1])
  lora_step/pytorch_lora_weights.safetensors and lora_step.safetensors
      one training step of the PEFT-wrapped UNet (base frozen, rank 4,
      alpha 8, random A and B): noisy latents, timesteps, text states and
      target noise in, the MSE loss and every lora_A / lora_B gradient out
      (named "grad.<key of the LoRA file>")

--check DIR (developer-run, not CI): DIR holds a LoRA that diffc saved and
unet_check.safetensors (x, t, text, out: diffc's UNet output with it; test_lora
writes both when DC_LORA_CHECK_DIR is set); diffusers' load_lora_weights(DIR)
must give the same output.

Made with diffusers 0.42.1, peft 0.21.2, transformers 5.25, torch 2.15.
Run: /work/venv-torch/bin/python scripts/make_lora_fixtures.py [--check DIR]
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from fixture_io import write_safetensors

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
MODEL = os.path.join(ROOT, "sd_tiny")
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RANK, ALPHA = 4, 8


def randomize_lora(model, gen):
    """B away from zero (PEFT's init leaves the adapter a no-op), A redrawn too."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def add_lora(model, targets):
    """PEFT's adapter on a frozen model. Through PEFT itself: transformers 5.25's
    add_adapter asks for a PEFT (>= 0.22) that PyPI does not have yet."""
    model.requires_grad_(False)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
    inject_adapter_in_model(config, model)
    return config


def old_names(sd):
    """The same tensors under the older diffusers names, with an alpha per module."""
    out = {}
    for key, v in sd.items():
        module, ab = key.rsplit(".lora_", 1)
        up = ab.startswith("B")
        if module.startswith("text_encoder."):
            new = f"{module}.lora_linear_layer.{'up' if up else 'down'}.weight"
        elif module.endswith(".to_q"):  # the attention processors' names
            new = f"{module[:-5]}.processor.to_q_lora.{'up' if up else 'down'}.weight"
        else:
            new = f"{module}.lora.{'up' if up else 'down'}.weight"
        out[new] = v.clone()
        out[f"{module}.alpha"] = torch.tensor(float(ALPHA))
    return out


def pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lora_file(gen):
    pipe = pipeline()
    unet_config = add_lora(pipe.unet, UNET_TARGETS)
    text_config = add_lora(pipe.text_encoder, TEXT_TARGETS)
    randomize_lora(pipe.unet, gen)
    randomize_lora(pipe.text_encoder, gen)
    out = os.path.join(ROOT, "sd_tiny_lora")
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())
    sd = load_file(os.path.join(out, "pytorch_lora_weights.safetensors"))
    save_file(old_names(sd), os.path.join(ROOT, "sd_tiny_lora_old.safetensors"))
    print("wrote", out, "with", len(sd), "tensors, e.g.", sorted(sd)[:2])
    return out


def record_run(lora_dir, gen):
    pipe = pipeline()
    pipe.load_lora_weights(lora_dir)
    prompts, steps, guidance, scale = ["a red cube", "two blue balls"], 4, 7.5, 0.7
    latents = torch.randn(len(prompts), 4, 8, 8, generator=gen)
    with torch.no_grad():
        final = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, latents=latents.clone(),
                     height=16, width=16, output_type="latent", cross_attention_kwargs={"scale": scale}).images
        images = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
        images = (images / 2 + 0.5).clamp(0, 1)
    tensors = {"latents": latents.permute(0, 2, 3, 1).contiguous(),
               "images": images.permute(0, 2, 3, 1).contiguous()}
    meta = {"run": json.dumps(dict(prompts=prompts, steps=steps, guidance=guidance, lora_scale=scale))}
    save_file(tensors, os.path.join(ROOT, "sd_tiny_lora_runs.safetensors"), metadata=meta)
    print("wrote sd_tiny_lora_runs.safetensors")


def record_step(gen):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"))
    config = add_lora(unet, UNET_TARGETS)
    randomize_lora(unet, gen)
    unet.train()
    out = os.path.join(ROOT, "lora_step")
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=config.to_dict())
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([37, 802], dtype=torch.int32)
    text = torch.randn(2, 7, 32, generator=gen)
    target = torch.randn(2, 4, 8, 8, generator=gen)
    pred = unet(x, t.long(), text).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    loss.backward()
    tensors = {"x": x.permute(0, 2, 3, 1).contiguous(), "t": t, "text": text.contiguous(),
               "target": target.permute(0, 2, 3, 1).contiguous(), "loss": loss.detach().reshape(1)}
    trainable = 0
    for name, p in unet.named_parameters():
        if p.requires_grad:
            trainable += 1
            key = "unet." + name.replace(".default", "")
            tensors["grad." + key] = p.grad.detach().clone()
    assert trainable == len(tensors) - 5 and all("lora_" in k for k in tensors if k.startswith("grad."))
    write_safetensors(os.path.join(ROOT, "lora_step.safetensors"), tensors, {"rank": RANK, "alpha": ALPHA})
    print("wrote lora_step.safetensors:", trainable, "LoRA gradients, loss", loss.item())


def check(dir):
    io = load_file(os.path.join(dir, "unet_check.safetensors"))
    pipe = pipeline()
    pipe.load_lora_weights(dir)
    meta = pipe.unet.peft_config
    cfg = next(iter(meta.values()))
    with torch.no_grad():
        out = pipe.unet(io["x"].permute(0, 3, 1, 2), io["t"].long(), io["text"]).sample.permute(0, 2, 3, 1)
    err = (out - io["out"]).abs().max().item()
    scale = io["out"].abs().max().item()
    print(f"diffusers loaded r={cfg.r} lora_alpha={cfg.lora_alpha} targets={sorted(cfg.target_modules)}; "
          f"max |diffusers - diffc| = {err:.3g} of {scale:.3g}")
    sys.exit(0 if err <= 1e-4 * max(1.0, scale) else 1)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check(sys.argv[2])
    gen = torch.Generator().manual_seed(17)
    lora_dir = make_lora_file(gen)
    record_run(lora_dir, gen)
    record_step(gen)


if __name__ == "__main__":
    main()
