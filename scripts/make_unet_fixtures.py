#!/usr/bin/env python3
"""Reference UNets for tests/test_unet.c, from diffusers' UNet2DModel.

Writes tiny random-weight models, each a diffusers model folder that
UNet2DModel.from_pretrained() reads, plus the reference values:
  tests/fixtures/unet_NAME/config.json                          the model's config
  tests/fixtures/unet_NAME/diffusion_pytorch_model.safetensors  its weights (F32; sharded_fp16: see below)
  tests/fixtures/unet_NAME/reference.safetensors                inputs, output, gradients
Models:
  attn_class   AttnDownBlock2D/AttnUpBlock2D, 5 class embeddings (4 classes and
               the "no class" label), attention_head_dim 8 (2 heads at 16 channels),
               a mid-block attention norm with its own group count, dropout (the
               references are in eval mode), float timesteps, batch 3.
  scale_shift  resnet_time_scale_shift scale_shift (so the mid attention has no
               norm), attention_head_dim null (one head), 3 levels, 2 layers per
               block, downsample_padding 0, flip_sin_to_cos false, freq_shift 1,
               mid_block_scale_factor sqrt(2), 1 -> 2 channels, 8x12 inputs.
  legacy       the weights saved under the older attention names (query, key,
               value, proj_attn), which diffusers still loads; add_attention false,
               center_input_sample, integer timesteps.
  mish_resnet  act_fn mish; ResnetDownsampleBlock2D and ResnetUpsampleBlock2D
               (resnets with down=True / up=True as resamplers), and
               downsample_type / upsample_type "resnet", which AttnDownBlock2D and
               AttnUpBlock2D follow and DownBlock2D / UpBlock2D ignore;
               class_embed_type "timestep" (labels through the sinusoids and their
               own MLP), 3 levels, 12x8 inputs.
  gelu_identity  act_fn gelu with resnet_time_scale_shift scale_shift;
               class_embed_type "identity" (input.y holds the embeddings, F32
               [N, T]); time_embedding_dim 24 (not 4 x 8); upsample_type "resnet"
               on an UpBlock2D, which ignores it.
  fourier_skip an NCSN++ model: time_embedding_type fourier (GaussianFourierProjection
               of the noise level, the output divided by it), SkipDownBlock2D,
               AttnSkipDownBlock2D, AttnSkipUpBlock2D, SkipUpBlock2D (FIR resampling
               resnets, the image-sized skip path), mid_block_scale_factor sqrt(2);
               2 levels of 32 channels (the Skip attentions' norms have 32 groups),
               norm_num_groups null (the mid block and conv_norm_out take
               min(C / 4, 32) groups), noise levels 0.5 and 12.
  sharded_fp16 the weights saved as diffusers saves a large model's fp16 variant:
               diffusion_pytorch_model.fp16-0000K-of-0000N.safetensors shards (F16)
               and diffusion_pytorch_model.safetensors.index.fp16.json, and no
               plain weights; the references come from the fp16 values.
tests/fixtures/unet_configs.json: configs from the wild with the parameter
count (tensors and elements) UNet2DModel gives each: the defaults ({}),
google/ddpm-cifar10-32's config.json (as published, diffusers 0.0.4: no
attention_head_dim, so 8 applies), the model of diffusers'
train_unconditional.py example, and an NCSN++ model (Skip blocks, fourier
time embedding, norm_num_groups null) in the shape of google/ncsnpp-*'s.
reference.safetensors holds the inputs in our NHWC layout: input.x [N, H, W, C],
input.t [N] (F32, or I32 for integer timesteps), input.y [N] I32 (class labels,
attn_class only), input.r [N, H, W, out] (the loss weights); output [N, H, W, out];
grad.x (NHWC) and grad.NAME for the parameters listed by grad_names() (PyTorch
layout, as the weights; every to_k.bias left out, its gradient is zero), all gradients of L = sum(output * r). The references
come from the model run in float64 on the float32 weights and inputs, so they
measure only our float32 error (diffusers computes the timestep embedding and
the attention softmax in float32 even then). __metadata__: dropout_layers is the
number of resnets that apply dropout in training, timesteps "F32" or "I32".

Arguments name the models to write ("configs": unet_configs.json; default: all);
each model draws from its own seed, so one can be remade alone. attn_class,
scale_shift, legacy and unet_configs.json were made with diffusers 0.27.2
(torch 1.13); mish_resnet and gelu_identity with diffusers 0.42.1 (torch 2.15):
  /work/venv-torch/bin/python scripts/make_unet_fixtures.py mish_resnet gelu_identity
"""
import json
import math
import os
import shutil
import sys
import zlib

import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from safetensors.torch import save_file

from fixture_io import perturb_norms

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

MODELS = {
    "attn_class": dict(
        config=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
                    layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=4,
                    attn_norm_num_groups=2, attention_head_dim=8, num_class_embeds=5, dropout=0.1),
        n=3, h=8, w=8, t=[17.5, 999.0, 0.25], y=[0, 4, 2]),
    "scale_shift": dict(
        config=dict(sample_size=[8, 12], in_channels=1, out_channels=2, block_out_channels=[8, 8, 16],
                    layers_per_block=2, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], norm_num_groups=4,
                    attention_head_dim=None, resnet_time_scale_shift="scale_shift", downsample_padding=0,
                    flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
                    mid_block_scale_factor=math.sqrt(2.0)),
        n=2, h=8, w=12, t=[500.0, 3.0]),
    "legacy": dict(
        config=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
                    layers_per_block=1, down_block_types=["AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D"], norm_num_groups=2, attention_head_dim=4,
                    add_attention=False, center_input_sample=True),
        n=2, h=8, w=8, t=[999, 1]),
    "mish_resnet": dict(
        config=dict(sample_size=[12, 8], in_channels=2, out_channels=3, block_out_channels=[8, 16, 16],
                    layers_per_block=1, act_fn="mish", norm_num_groups=4, attention_head_dim=8,
                    down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
                    downsample_type="resnet", upsample_type="resnet", class_embed_type="timestep",
                    num_class_embeds=4),
        n=2, h=12, w=8, t=[250.5, 7.0], y=[3, 1]),
    "gelu_identity": dict(
        config=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
                    layers_per_block=1, act_fn="gelu", norm_num_groups=4, attention_head_dim=None,
                    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D"], upsample_type="resnet",
                    resnet_time_scale_shift="scale_shift", class_embed_type="identity",
                    time_embedding_dim=24),
        n=2, h=8, w=8, t=[40.0, 900.0], y_embed=24),
    "fourier_skip": dict(
        config=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[32, 32],
                    layers_per_block=1, norm_num_groups=None, attention_head_dim=16,
                    time_embedding_type="fourier", mid_block_scale_factor=math.sqrt(2.0),
                    down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D"],
                    up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D"]),
        n=2, h=8, w=8, t=[0.5, 12.0]),
    "sharded_fp16": dict(
        config=dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16],
                    layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                    down_block_types=["AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D"], num_class_embeds=3),
        n=2, h=8, w=8, t=[600.0, 20.0], y=[2, 0], variant="fp16", max_shard_size="20KB"),
}

LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def grad_names(model):
    """Every parameter of up to 256 elements (norms, biases, small projections)
    and the big ones that each stand for a kind: conv_in/conv_out, the time MLP,
    the class table, the first attention's projections, the first shortcut,
    down- and upsampler convs and an up-block resnet's convs."""
    names = [n for n, p in model.named_parameters() if p.numel() <= 256 and p.requires_grad]
    firsts = ["conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight",
              "time_embedding.linear_2.weight", "class_embedding.weight", "class_embedding.linear_1.weight",
              "class_embedding.linear_2.weight"]
    for pattern in ["attentions.0.to_q.weight", "attentions.0.to_k.weight", "attentions.0.to_v.weight",
                    "attentions.0.to_out.0.weight", "conv_shortcut.weight", "downsamplers.0.conv.weight",
                    "upsamplers.0.conv.weight", "up_blocks.0.resnets.0.conv1.weight",
                    "up_blocks.0.resnets.0.conv2.weight", "mid_block.resnets.1.conv2.weight",
                    "time_emb_proj.weight", "downsamplers.0.conv1.weight", "upsamplers.0.conv2.weight",
                    "resnet_down.conv_shortcut.weight", "resnet_up.conv1.weight", "skip_conv.weight"]:
        match = [n for n, _ in model.named_parameters() if n.endswith(pattern)]
        firsts += match[:1]
    have = {n: p for n, p in model.named_parameters() if p.requires_grad}  # not time_proj.weight (frozen)
    # to_k.bias has no gradient in exact arithmetic (softmax ignores a shift
    # shared by all keys): its float64 reference is rounding noise
    return sorted((set(names) | {n for n in firsts if n in have}) - {n for n in have if n.endswith("to_k.bias")})


def dropout_layers(model):
    return sum(1 for m in model.modules() if isinstance(m, ResnetBlock2D) and m.dropout.p > 0)


def class_input(spec):
    """Labels (int64 [N]), embeddings for class_embed_type identity (float [N, T]), or None."""
    if "y_embed" in spec:
        return torch.randn(spec["n"], spec["y_embed"])
    return torch.tensor(spec["y"], dtype=torch.int64) if "y" in spec else None


def reference(model, spec, int_t):
    """Inputs, output and gradients in float64; tensors keyed for reference.safetensors."""
    cfg = spec["config"]
    n, h, w = spec["n"], spec["h"], spec["w"]
    x = torch.randn(n, cfg["in_channels"], h, w)
    r = torch.randn(n, cfg["out_channels"], h, w)
    t = torch.tensor(spec["t"], dtype=torch.int64 if int_t else torch.float32)
    y = class_input(spec)
    m64 = model.double().eval()
    # time_proj gives float32 whatever the model's dtype; forward casts it for the
    # time MLP but not for class_embed_type "timestep", whose MLP then refuses it
    proj = m64.time_proj.forward
    m64.time_proj.forward = lambda ts: proj(ts).double()
    x64 = x.double().requires_grad_(True)
    y64 = y.double() if y is not None and y.is_floating_point() else y
    out = m64(x64, t if int_t else t.double(), class_labels=y64).sample
    (out * r.double()).sum().backward()
    nhwc = lambda a: a.detach().permute(0, 2, 3, 1).contiguous().float()
    ref = {"input.x": nhwc(x), "input.r": nhwc(r), "output": nhwc(out), "grad.x": nhwc(x64.grad),
           "input.t": t.to(torch.int32) if int_t else t}
    if y is not None:
        ref["input.y"] = y if y.is_floating_point() else y.to(torch.int32)
    params = dict(m64.named_parameters())
    for name in grad_names(m64):
        ref[f"grad.{name}"] = params[name].grad.float().contiguous()
    del m64.time_proj.forward
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


def check_reload(folder, model, spec, int_t):
    """diffusers reads the folder back (old names, shards, variant included) to the same model."""
    again = UNet2DModel.from_pretrained(folder, variant=spec.get("variant")).float().eval()
    x = torch.randn(spec["n"], spec["config"]["in_channels"], spec["h"], spec["w"])
    t = torch.tensor(spec["t"], dtype=torch.int64 if int_t else torch.float32)
    y = class_input(spec)
    with torch.no_grad():
        a = model.eval()(x, t, class_labels=y).sample
        b = again(x, t, class_labels=y).sample
    assert torch.equal(a, b), f"{folder}: reloaded model differs"


def make(name, spec):
    folder = os.path.join(FIXTURES, f"unet_{name}")
    shutil.rmtree(folder, ignore_errors=True)
    model = UNet2DModel(**spec["config"])
    perturb_norms(model)
    if "variant" in spec:  # the float64 references then start from the stored fp16 values
        model.half().save_pretrained(folder, safe_serialization=True, variant=spec["variant"],
                                     max_shard_size=spec["max_shard_size"])
        model.float()
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if name == "legacy":
        save_file(legacy_state_dict(model), os.path.join(folder, "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt"})
    int_t = all(isinstance(v, int) for v in spec["t"])
    check_reload(folder, model, spec, int_t)
    ref = reference(model, spec, int_t)
    meta = {"dropout_layers": str(dropout_layers(model)), "timesteps": "I32" if int_t else "F32"}
    save_file(ref, os.path.join(folder, "reference.safetensors"), metadata=meta)
    with open(os.path.join(folder, "config.json")) as f:
        n_keys = len(json.load(f))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"wrote {os.path.normpath(folder)}: {sum(p.numel() for p in model.parameters())} weights, "
          f"{len(ref)} reference tensors, {n_keys} config keys, {size} bytes")


# google/ddpm-cifar10-32/config.json as published
CIFAR10 = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}
# an NCSN++ model as diffusers' score_sde_ve pipelines hold one (google/ncsnpp-*): fourier
# time embedding, Skip blocks at every level, norm_num_groups null; written here at 64x64
# (5 levels), not downloaded
NCSNPP = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [64, 128, 128, 128, 128], "center_input_sample": False,
    "down_block_types": ["SkipDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D",
                         "SkipDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1.41421356237, "norm_eps": 1e-06,
    "norm_num_groups": None, "out_channels": 3, "sample_size": 64, "time_embedding_type": "fourier",
    "up_block_types": ["SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D",
                       "SkipUpBlock2D"],
}
# examples/unconditional_image_generation/train_unconditional.py, resolution 64
TRAIN_UNCONDITIONAL = dict(
    sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
)


def wild_configs():
    out = {}
    for name, config in [("default", {}), ("ddpm_cifar10_32", CIFAR10),
                         ("train_unconditional", TRAIN_UNCONDITIONAL), ("ncsnpp_64", NCSNPP)]:
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        state = UNet2DModel(**kwargs).state_dict()
        out[name] = {"config": config, "tensors": len(state), "numel": sum(t.numel() for t in state.values())}
    path = os.path.join(FIXTURES, "unet_configs.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}: " + ", ".join(f"{k} {v['numel']}" for k, v in out.items()))


def main():
    names = sys.argv[1:] or list(MODELS) + ["configs"]
    for name in names:
        torch.manual_seed(20240612 + zlib.crc32(name.encode()))
        if name == "configs":
            wild_configs()
        else:
            make(name, MODELS[name])


if __name__ == "__main__":
    main()
