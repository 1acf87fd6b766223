#!/usr/bin/env python3
"""Reference CLIP text encoders for tests/test_clip_text.c, from transformers' CLIPTextModel.

Made with transformers 5.25, diffusers 0.42.1 (torch 2.15.0):
  /work/venv-torch/bin/python scripts/make_clip_text_fixtures.py [NAME...]

Writes tiny random-weight models, each a folder as CLIPTextModel.save_pretrained
writes it (what a Stable Diffusion pipeline's text_encoder/ holds), plus the references:
  tests/fixtures/clip_text_NAME/config.json              CLIPTextConfig
  tests/fixtures/clip_text_NAME/model[.VARIANT].safetensors or a sharded set with its index
  tests/fixtures/clip_text_NAME/reference.safetensors    inputs and outputs, below
Models:
  sd1     SD-1.x-like: quick_gelu, legacy eos_token_id 2 (the pooled token is the
          largest id, the real eos), pad = eos as SD-1.x's tokenizer pads; 24 wide,
          4 heads, 3 layers, f32 model.safetensors under the names of the hub's SD
          files (transformers 4: "text_model." before every name, and the int64
          buffer text_model.embeddings.position_ids); transformers 5 writes the
          names without "text_model." (the other models).
  sd2     SD-2.x-like (OpenCLIP): gelu, eos_token_id 2, pad 0, layer_norm_eps 1e-6;
          32 wide, 4 heads, 2 layers; saved in float16 as diffusers' variant
          model.fp16.safetensors only (references from the f16 values).
  neweos  a newer config: eos_token_id the real eos (not the largest id, so the
          legacy argmax would pick another token), pad = eos (the first eos
          counts); 24 wide, 2 heads, 4 layers, bfloat16, sharded
          (model-0000K-of-0000N.safetensors + model.safetensors.index.json);
          sequences shorter than max_position_embeddings.
reference.safetensors (F32 unless said):
  ids      [N, L] I32: bos, random tokens (fewer in later rows), eos, padding to L,
           as SD pipelines tokenize (padding="max_length"); no attention mask, as
           StableDiffusionPipeline passes none (use_attention_mask is unset)
  last     [N, L, C] last_hidden_state (after final_layer_norm)
  hidden   [layers + 1, N, L, C] hidden_states: the embeddings, then every layer's output
  skip1    [N, L, C] final_layer_norm(hidden_states[-2]): diffusers' prompt embeds with clip_skip=1
  pooled   [N, C] pooler_output
Weights are drawn afresh with a spread that makes every part matter.
"""
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.dirname(__file__))
from fixture_io import write_safetensors  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

MODELS = {
    "sd1": dict(config=dict(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
                            bos_token_id=0, pad_token_id=1, eos_token_id=2),
                bos=48, eos=49, pad=49, n=3, length=16, seed=1, hub_names=True),
    "sd2": dict(config=dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu",
                            layer_norm_eps=1e-6, bos_token_id=0, pad_token_id=1, eos_token_id=2),
                bos=38, eos=39, pad=0, n=2, length=16, seed=2, dtype=torch.float16, variant="fp16"),
    "neweos": dict(config=dict(vocab_size=48, hidden_size=24, intermediate_size=32, num_hidden_layers=4,
                               num_attention_heads=2, max_position_embeddings=20, hidden_act="quick_gelu",
                               bos_token_id=30, pad_token_id=31, eos_token_id=31),
                   bos=30, eos=31, pad=31, n=3, length=12, seed=3, dtype=torch.bfloat16,
                   max_shard_size="20KB"),
}


def randomise(model):
    """Weights with a spread: linear N(0, 1/fan_in), norms away from 1 and 0, tables N(0, 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)


def build(spec):
    torch.manual_seed(spec["seed"])
    model = CLIPTextModel(CLIPTextConfig(**spec["config"])).eval()
    randomise(model)
    dtype = spec.get("dtype", torch.float32)
    return model.to(dtype).to(torch.float32)  # the references come from the saved precision


def token_ids(spec, gen):
    """bos, random ordinary tokens (never bos, eos or pad; some above eos), eos, pad."""
    n, length, vocab = spec["n"], spec["length"], spec["config"]["vocab_size"]
    specials = {spec["bos"], spec["eos"], spec["pad"]}
    ids = torch.full((n, length), spec["pad"], dtype=torch.long)
    for r in range(n):
        count = max(1, length - 2 - 4 * r)
        words = [w for w in torch.randint(0, vocab, (4 * length,), generator=gen).tolist() if w not in specials]
        ids[r, 0] = spec["bos"]
        ids[r, 1:1 + count] = torch.tensor(words[:count])
        ids[r, 1 + count] = spec["eos"]
    return ids


def reference(model, spec):
    ids = token_ids(spec, torch.Generator().manual_seed(spec["seed"]))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        skip1 = model.final_layer_norm(out.hidden_states[-2])
    assert len(out.hidden_states) == spec["config"]["num_hidden_layers"] + 1
    return {
        "ids": ids.to(torch.int32),
        "last": out.last_hidden_state.contiguous(),
        "hidden": torch.stack(out.hidden_states).contiguous(),
        "skip1": skip1.contiguous(),
        "pooled": out.pooler_output.contiguous(),
    }


def rename_as_hub(folder, spec):
    """model.safetensors under transformers 4's names, as the hub's SD text encoders hold them."""
    path = os.path.join(folder, "model.safetensors")
    tensors = {"text_model." + k: v for k, v in load_file(path).items()}
    positions = spec["config"]["max_position_embeddings"]
    tensors["text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    save_file(tensors, path, metadata={"format": "pt"})


def check_reload(folder, spec, tensors):
    """transformers reads the folder back to the same outputs."""
    kwargs = {"variant": spec["variant"]} if "variant" in spec else {}
    model = CLIPTextModel.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        last = model(input_ids=tensors["ids"].long()).last_hidden_state
    err = (last - tensors["last"]).abs().max().item()
    assert err <= 1e-5 * tensors["last"].abs().max().item(), f"{folder}: reload differs by {err}"


def make(name, spec):
    model = build(spec)
    tensors = reference(model, spec)
    folder = os.path.join(FIXTURES, "clip_text_" + name)
    shutil.rmtree(folder, ignore_errors=True)
    kwargs = {k: spec[k] for k in ("max_shard_size", "variant") if k in spec}
    model.to(spec.get("dtype", torch.float32)).save_pretrained(folder, safe_serialization=True, **kwargs)
    if spec.get("hub_names"):
        rename_as_hub(folder, spec)
    write_safetensors(os.path.join(folder, "reference.safetensors"), tensors, {"seed": spec["seed"]})
    check_reload(folder, spec, tensors)
    print(f"{name}: files {sorted(os.listdir(folder))}, ids {tensors['ids'].tolist()}")


def main():
    for name in sys.argv[1:] or list(MODELS):
        make(name, MODELS[name])


if __name__ == "__main__":
    main()
