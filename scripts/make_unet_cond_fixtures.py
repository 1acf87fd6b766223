#!/usr/bin/env python3
"""Reference UNets for tests/test_unet_cond.c, from diffusers' UNet2DConditionModel.

Made with diffusers 0.42.1 (torch 2.15):
  /work/venv-torch/bin/python scripts/make_unet_cond_fixtures.py [NAME...]

Writes tiny random-weight models, each a diffusers model folder that
UNet2DConditionModel.from_pretrained() reads, plus the reference values:
  tests/fixtures/unet_cond_NAME/config.json                          the model's config
  tests/fixtures/unet_cond_NAME/diffusion_pytorch_model*.safetensors its weights
  tests/fixtures/unet_cond_NAME/reference.safetensors                inputs, output, gradients
Models:
  sd1   SD 1.x's layout: CrossAttnDownBlock2D then DownBlock2D, UpBlock2D then
        CrossAttnUpBlock2D, UNetMidBlock2DCrossAttn; attention_head_dim 2 (an
        integer: the number of heads, head widths 4 and 8), 1x1 conv proj_in /
        proj_out, cross_attention_dim 32, float timesteps, batch 2, 8x8 latents.
  sd2   SD 2.x's: use_linear_projection, attention_head_dim a per-level list
        [2, 4] (heads: head width 4 at both levels), upcast_attention, every level
        cross-attends, layers_per_block [1, 2] (a list; the up path reverses it),
        cross_attention_dim 24, integer timesteps, one timestep for the batch
        (t [1]), 8x12 latents, center_input_sample, time_embedding_dim 40; the
        weights stored as bf16 (the references come from the bf16 values).
  tl2   transformer_layers_per_block [2, 1, 1] over three levels with a DownBlock2D
        last (SD's), mid_block_type null, downsample_padding 0, flip_sin_to_cos
        false, freq_shift 1, dropout 0.1 (references in eval mode), 12x8 latents;
        the weights saved as diffusers saves a large model's fp16 variant:
        diffusion_pytorch_model.fp16-0000K-of-0000N.safetensors shards (F16) and
        diffusion_pytorch_model.safetensors.index.fp16.json, no plain weights (the
        references come from the fp16 values).
tests/fixtures/unet_cond_configs.json: the default config ({}) and SD 1.5's and
SD 2.1's unet/config.json (in the shape of the published ones) with the number
of tensors and elements diffusers declares for each.
Arguments name what to write (the models, "configs"; default: all).
Norm weights and biases are perturbed away from 1 and 0 so that using them matters.
reference.safetensors holds, in our layouts: input.x [N, H, W, C], input.t [N]
(or [1]; F32, or I32 for integer timesteps), input.text [N, L, D] (the text
states), input.r [N, H, W, out] (the loss weights); output [N, H, W, out]; grad.x
(NHWC), grad.text and grad.NAME for a few parameters of each kind (PyTorch
layout, as the weights), all gradients of L = sum(output * r). The references
come from the model run in float64 on the float32 (or fp16) weights and inputs,
so they measure only our float32 error. __metadata__: tensors, the number of
tensors in the state_dict.
"""
import json
import os
import shutil
import sys
import zlib

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from fixture_io import perturb_norms

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

MODELS = {
    "sd1": dict(
        config=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16],
                    layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups=4,
                    attention_head_dim=2, cross_attention_dim=32),
        n=2, h=8, w=8, text_len=7, t=[17.5, 999.0]),
    "sd2": dict(
        config=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16],
                    layers_per_block=[1, 2], down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups=4,
                    attention_head_dim=[2, 4], cross_attention_dim=24, use_linear_projection=True,
                    upcast_attention=True, center_input_sample=True, time_embedding_dim=40),
        n=2, h=8, w=12, text_len=5, t=[321], dtype=torch.bfloat16),
    "tl2": dict(
        config=dict(sample_size=[12, 8], in_channels=4, out_channels=3, block_out_channels=[8, 16, 16],
                    layers_per_block=1, transformer_layers_per_block=[2, 1, 1],
                    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                    mid_block_type=None, norm_num_groups=4, attention_head_dim=2, cross_attention_dim=16,
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1),
        n=2, h=12, w=8, text_len=6, t=[500.0, 3.0], variant="fp16", max_shard_size="40KB"),
}


GRAD_PATTERNS = ["conv_in.weight", "conv_out.weight", "conv_out.bias", "time_embedding.linear_1.weight",
                 "time_embedding.linear_2.bias", "attentions.0.norm.weight", "attentions.0.proj_in.weight",
                 "attentions.0.proj_out.bias", "transformer_blocks.0.norm1.weight",
                 "transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_k.weight",
                 "transformer_blocks.0.attn1.to_v.weight", "transformer_blocks.0.attn1.to_out.0.weight",
                 "transformer_blocks.0.attn2.to_k.weight", "transformer_blocks.0.attn2.to_v.weight",
                 "transformer_blocks.0.attn2.to_out.0.bias", "transformer_blocks.0.norm3.bias",
                 "transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.ff.net.0.proj.bias",
                 "transformer_blocks.0.ff.net.2.weight", "resnets.0.conv1.weight", "resnets.0.time_emb_proj.weight",
                 "conv_shortcut.weight", "downsamplers.0.conv.weight", "upsamplers.0.conv.weight",
                 "conv_norm_out.bias"]


def grad_names(model):
    """The first parameter (in state_dict order) of each pattern, and for
    transformer blocks also the last, so deep and shallow ones are both checked."""
    names = [n for n, p in model.named_parameters()]
    out = set()
    for pattern in GRAD_PATTERNS:
        match = [n for n in names if n.endswith(pattern)]
        out.update(match[:1] + match[-1:])
    return sorted(out)


def reference(model, spec, int_t):
    cfg = spec["config"]
    n, h, w = spec["n"], spec["h"], spec["w"]
    width = cfg["cross_attention_dim"]
    x = torch.randn(n, cfg["in_channels"], h, w)
    text = torch.randn(n, spec["text_len"], width)
    r = torch.randn(n, cfg["out_channels"], h, w)
    t = torch.tensor(spec["t"], dtype=torch.int64 if int_t else torch.float32)
    m64 = model.double().eval()
    x64 = x.double().requires_grad_(True)
    text64 = text.double().requires_grad_(True)
    out = m64(x64, t if int_t else t.double(), encoder_hidden_states=text64).sample
    (out * r.double()).sum().backward()
    nhwc = lambda a: a.detach().permute(0, 2, 3, 1).contiguous().float()
    ref = {"input.x": nhwc(x), "input.r": nhwc(r), "input.text": text, "output": nhwc(out),
           "grad.x": nhwc(x64.grad), "grad.text": text64.grad.float().contiguous(),
           "input.t": t.to(torch.int32) if int_t else t}
    params = dict(m64.named_parameters())
    for name in grad_names(m64):
        ref[f"grad.{name}"] = params[name].grad.float().contiguous()
    model.float()
    return ref


def check_reload(folder, model, spec):
    again = UNet2DConditionModel.from_pretrained(folder, variant=spec.get("variant")).float().eval()
    cfg = spec["config"]
    x = torch.randn(spec["n"], cfg["in_channels"], spec["h"], spec["w"])
    text = torch.randn(spec["n"], spec["text_len"], cfg["cross_attention_dim"])
    t = torch.tensor(spec["t"])
    with torch.no_grad():
        a = model.eval()(x, t, encoder_hidden_states=text).sample
        b = again(x, t, encoder_hidden_states=text).sample
    assert torch.equal(a, b), f"{folder}: reloaded model differs"


def make(name, spec):
    folder = os.path.join(FIXTURES, f"unet_cond_{name}")
    shutil.rmtree(folder, ignore_errors=True)
    model = UNet2DConditionModel(**spec["config"])
    perturb_norms(model)
    if "variant" in spec:  # the float64 references then start from the stored fp16 values
        model.half().save_pretrained(folder, safe_serialization=True, variant=spec["variant"],
                                     max_shard_size=spec["max_shard_size"])
        model.float()
    elif "dtype" in spec:  # likewise from the stored bf16 values
        model.to(spec["dtype"]).save_pretrained(folder, safe_serialization=True)
        model.float()
    else:
        model.save_pretrained(folder, safe_serialization=True)
    check_reload(folder, model, spec)
    int_t = all(isinstance(v, int) for v in spec["t"])
    ref = reference(model, spec, int_t)
    save_file(ref, os.path.join(folder, "reference.safetensors"),
              metadata={"tensors": str(len(model.state_dict()))})
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"wrote {os.path.normpath(folder)}: {sum(p.numel() for p in model.parameters())} weights, "
          f"{len(model.state_dict())} tensors, {len(ref)} reference tensors, {size} bytes")


SD_BLOCKS = dict(
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
# unet/config.json of Stable Diffusion 1.5 and 2.1 pipelines, written here in
# the shape of the published ones (not downloaded)
SD15 = dict(_class_name="UNet2DConditionModel", _diffusers_version="0.6.0", act_fn="silu", attention_head_dim=8,
            block_out_channels=[320, 640, 1280, 1280], center_input_sample=False, cross_attention_dim=768,
            downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
            mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
            **SD_BLOCKS)
SD21 = dict(SD15, _diffusers_version="0.10.0.dev0", attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
            dual_cross_attention=False, num_class_embeds=None, only_cross_attention=False, sample_size=96,
            use_linear_projection=True, upcast_attention=True)


def wild_configs():
    """tests/fixtures/unet_cond_configs.json: configs with the parameter count
    (tensors and elements) diffusers gives each, counted on the meta device."""
    out = {}
    for name, config in [("default", {}), ("sd15", SD15), ("sd21", SD21)]:
        with torch.device("meta"):
            state = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")}).state_dict()
        out[name] = {"config": config, "tensors": len(state), "numel": sum(t.numel() for t in state.values())}
    path = os.path.join(FIXTURES, "unet_cond_configs.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}: " + ", ".join(f"{k} {v['numel']}" for k, v in out.items()))


def main():
    for name in sys.argv[1:] or list(MODELS) + ["configs"]:
        torch.manual_seed(20261207 + zlib.crc32(name.encode()))
        if name == "configs":
            wild_configs()
        else:
            make(name, MODELS[name])


if __name__ == "__main__":
    main()
