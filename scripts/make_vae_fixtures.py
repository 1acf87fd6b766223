#!/usr/bin/env python3
"""Reference VAEs for tests/test_vae.c, from diffusers' AutoencoderKL.

Made with diffusers 0.42.1 (torch 2.15):
  /work/venv-torch/bin/python scripts/make_vae_fixtures.py [NAME... | configs]

Writes tiny random-weight models, each a diffusers model folder that
AutoencoderKL.from_pretrained() reads, plus the reference values:
  tests/fixtures/vae_NAME/config.json                     the model's config
  tests/fixtures/vae_NAME/diffusion_pytorch_model[.fp16].safetensors  its weights
  tests/fixtures/vae_NAME/reference.safetensors           inputs and outputs
Models:
  kl        block_out_channels [8, 16], 1 layer per block, 4 groups, latent 4,
            quant convs and the mid attention; quant_conv.bias pushed so that
            logvar channel 0 is clamped at 20 and channel 1 at -30 (the other
            two are not); also the gradients of L = sum(decode(z) * r) with
            respect to z and a few decoder parameters, and the tiled decode
            (enable_tiling: 8x8-latent tiles, sample_size 16 / 2) of 12x21
            latents and the tiled encode (16x16-pixel tiles) of a 24x44
            image. 16x16 images, batch 2.
  three     3 levels [8, 16, 16], 2 layers per block (3 resnets per up block),
            saved as the fp16 variant (diffusion_pytorch_model.fp16.safetensors,
            F16; the references come from the fp16 values) under the older
            attention names (query, key, value, proj_attn), which diffusers
            still loads; act_fn "swish"; 8x12 images, batch 1.
  plain     use_quant_conv and use_post_quant_conv false, mid_block_add_attention
            false, act_fn mish (the resnets'; conv_norm_out is always followed
            by silu), 1 -> 2 channels, latent 3, scaling_factor 0.13025 and
            shift_factor 0.0609; 8x8 images, batch 2.
reference.safetensors holds, NHWC: input.x [N, H, W, in] (in [-1, 1]),
input.z [N, h, w, latent] (latents for decode), input.noise [N, h, w, latent]
(for sample), input.r [N, H, W, out] (kl only: the gradient weights);
mean and logvar [N, h, w, latent] (DiagonalGaussianDistribution's, logvar
clamped), sample (mean + std * input.noise), decoded (decode(input.z)),
forward (decode(encode(x).mode()), AutoencoderKL(x, sample_posterior=False));
kl only: grad.z and grad.NAME (PyTorch layout), input.z_tiles [1, 12, 21, 4]
and tiled [1, 24, 42, 3], input.x_tiles [1, 24, 44, 3] and tiled_mean,
tiled_logvar [1, 12, 22, 4]. All computed in float64 on
the float32 (or float16) weights and inputs, so they measure only our
float32 error.

tests/fixtures/vae_configs.json: configs from the wild with the parameter count
(tensors and elements) AutoencoderKL gives each: the defaults ({}), the VAE of
Stable Diffusion 1.x/2.x (runwayml/stable-diffusion-v1-5's vae/config.json as
published) and of SDXL (the same layout, scaling_factor 0.13025).
"""
import json
import os
import shutil
import sys
import zlib

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

MODELS = {
    "kl": dict(
        config=dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                    sample_size=16),
        n=2, h=16, w=16, clamp=True, grads=True, tiles=[12, 21],
        image_tiles=[24, 44]),
    "three": dict(
        config=dict(block_out_channels=[8, 16, 16], layers_per_block=2, norm_num_groups=4, latent_channels=4,
                    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                    act_fn="swish", sample_size=[8, 12]),
        n=1, h=8, w=12, variant="fp16", legacy=True),
    "plain": dict(
        config=dict(in_channels=1, out_channels=2, block_out_channels=[8, 16], layers_per_block=1,
                    norm_num_groups=4, latent_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2, act_fn="mish", scaling_factor=0.13025,
                    shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
                    mid_block_add_attention=False, sample_size=8),
        n=2, h=8, w=8),
}

LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def perturb(model, spec):
    """Norm weights away from 1 and biases away from 0, so that using them
    matters; for `clamp`, logvar channels 0 and 1 pushed past the clamp."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
        if spec.get("clamp"):
            lat = spec["config"]["latent_channels"]
            model.quant_conv.bias[lat] += 40.0
            model.quant_conv.bias[lat + 1] -= 60.0


def nhwc(a):
    return a.detach().permute(0, 2, 3, 1).contiguous().float()


def grad_names(model):
    """The decoder's small parameters and a weight of each kind."""
    want = ["post_quant_conv.weight", "decoder.conv_in.weight", "decoder.conv_out.weight",
            "decoder.mid_block.attentions.0.to_q.weight", "decoder.mid_block.attentions.0.to_v.weight",
            "decoder.mid_block.attentions.0.to_out.0.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight",
            "decoder.up_blocks.0.resnets.0.conv1.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    small = [n for n, p in model.named_parameters()
             if n.startswith("decoder.") and p.numel() <= 64 and not n.endswith("to_k.bias")]
    return sorted(set(want) | set(small))


def reference(model, spec):
    cfg = spec["config"]
    n, h, w = spec["n"], spec["h"], spec["w"]
    down = 2 ** (len(cfg["block_out_channels"]) - 1)
    lat = cfg["latent_channels"]
    x = torch.rand(n, cfg.get("in_channels", 3), h, w) * 2 - 1
    z = torch.randn(n, lat, h // down, w // down)
    noise = torch.randn(n, lat, h // down, w // down)
    m64 = model.double().eval()
    with torch.no_grad():
        dist = m64.encode(x.double()).latent_dist
        sample = dist.mean + dist.std * noise.double()
        forward = m64(x.double(), sample_posterior=False).sample
    ref = {"input.x": nhwc(x), "input.z": nhwc(z), "input.noise": nhwc(noise), "mean": nhwc(dist.mean),
           "logvar": nhwc(dist.logvar), "sample": nhwc(sample), "forward": nhwc(forward)}
    z64 = z.double().requires_grad_(spec.get("grads", False))
    with torch.set_grad_enabled(spec.get("grads", False)):
        decoded = m64.decode(z64).sample
    ref["decoded"] = nhwc(decoded)
    if spec.get("grads"):
        r = torch.randn_like(decoded)
        (decoded * r).sum().backward()
        ref["input.r"] = nhwc(r)
        ref["grad.z"] = nhwc(z64.grad)
        params = dict(m64.named_parameters())
        for name in grad_names(m64):
            ref[f"grad.{name}"] = params[name].grad.float().contiguous()
    if "tiles" in spec:  # tiled_decode: tiles of sample_size / 2^(levels - 1) latents
        zt = torch.randn(1, lat, *spec["tiles"])
        m64.enable_tiling()
        with torch.no_grad():
            ref["tiled"] = nhwc(m64.decode(zt.double()).sample)
        ref["input.z_tiles"] = nhwc(zt)
        xt = torch.rand(1, cfg.get("in_channels", 3), *spec["image_tiles"]) * 2 - 1
        with torch.no_grad():
            dist = m64.encode(xt.double()).latent_dist
        m64.disable_tiling()
        ref["input.x_tiles"] = nhwc(xt)
        ref["tiled_mean"], ref["tiled_logvar"] = nhwc(dist.mean), nhwc(dist.logvar)
    model.float()
    return ref


def legacy_state_dict(model):
    out = {}
    for name, p in model.state_dict().items():
        for new, old in LEGACY_NAMES.items():
            tail = f".{new}.weight" if name.endswith(".weight") else f".{new}.bias"
            if ".attentions." in name and name.endswith(tail):
                name = name[: -len(tail)] + tail.replace(new, old)
                break
        out[name] = p.contiguous()
    return out


def check_reload(folder, model, spec):
    """diffusers reads the folder back (variant, old names) to the same model."""
    again = AutoencoderKL.from_pretrained(folder, variant=spec.get("variant")).float().eval()
    x = torch.rand(spec["n"], spec["config"].get("in_channels", 3), spec["h"], spec["w"]) * 2 - 1
    with torch.no_grad():
        a = model.eval()(x).sample
        b = again(x).sample
    assert torch.equal(a, b), f"{folder}: reloaded model differs"


def make(name, spec):
    folder = os.path.join(FIXTURES, f"vae_{name}")
    shutil.rmtree(folder, ignore_errors=True)
    model = AutoencoderKL(**spec["config"])
    perturb(model, spec)
    variant = spec.get("variant")
    if variant:  # the float64 references then start from the stored fp16 values
        model.half()
    model.save_pretrained(folder, safe_serialization=True, variant=variant)
    if spec.get("legacy"):
        file = f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"
        save_file(legacy_state_dict(model), os.path.join(folder, file), metadata={"format": "pt"})
    model.float()
    check_reload(folder, model, spec)
    ref = reference(model, spec)
    save_file(ref, os.path.join(folder, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"wrote {os.path.normpath(folder)}: {sum(p.numel() for p in model.parameters())} weights, "
          f"{len(ref)} reference tensors, {size} bytes")


SD_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
SDXL_VAE = dict(SD_VAE, _diffusers_version="0.20.0.dev0", sample_size=1024, scaling_factor=0.13025,
                force_upcast=True)


def wild_configs():
    out = {}
    for name, config in [("default", {}), ("sd", SD_VAE), ("sdxl", SDXL_VAE)]:
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        state = AutoencoderKL(**kwargs).state_dict()
        out[name] = {"config": config, "tensors": len(state), "numel": sum(t.numel() for t in state.values())}
    path = os.path.join(FIXTURES, "vae_configs.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}: " + ", ".join(f"{k} {v['numel']}" for k, v in out.items()))


def main():
    names = sys.argv[1:] or list(MODELS) + ["configs"]
    for name in names:
        torch.manual_seed(20261207 + zlib.crc32(name.encode()))
        if name == "configs":
            wild_configs()
        else:
            make(name, MODELS[name])


if __name__ == "__main__":
    main()
