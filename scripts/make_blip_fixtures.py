#!/usr/bin/env python3
"""Reference BLIP captioners for tests/test_blip.c, from transformers' BlipForConditionalGeneration.

Made with transformers 5.25 (torch 2.15.0):
  /work/venv-torch/bin/python scripts/make_blip_fixtures.py [NAME...]

Writes tiny random-weight models, each a transformers model folder that
BlipForConditionalGeneration.from_pretrained() reads, plus the reference values:
  tests/fixtures/blip/NAME/config.json                 BlipConfig (vision_config, text_config)
  tests/fixtures/blip/NAME/model.safetensors           the weights (see the models below)
  tests/fixtures/blip/NAME/preprocessor_config.json    BlipImageProcessor at the model's image size
  tests/fixtures/blip/NAME/reference.safetensors       inputs and outputs, below
write_folder() writes the folder; other generators (the tokenizer's) may add their
files to it (vocab.txt, tokenizer_config.json, ...), see EXTRA_WRITERS.
Models:
  tiny     vision 24 wide, 4 heads, 2 layers, 20x20 images in 5x5 patches; text 24
           wide, 4 heads, 2 layers, vocab 120; f32, tied LM head (no
           text_decoder.cls.predictions.decoder.weight in the file).
  wide     vision 48 wide, 3 heads, 3 layers, 24x24 images in 6x6 patches; text 40
           wide, 5 heads (head size 8), 1 layer, vocab 250, other layer_norm_eps;
           saved in float16 (references from the f16 values).
  sharded  vision 24 wide, 2 heads, 1 layer, 16x16 images in 4x4 patches; text 24
           wide, 2 heads, 3 layers, vocab 100, tie_word_embeddings false (its own
           LM decoder weight); sharded: model-0000K-of-0000N.safetensors and
           model.safetensors.index.json.
reference.safetensors (F32 unless said):
  pixels   [N, S, S, 3] the image, normalised, in our NHWC layout (pixel_values transposed)
  vision   [N, 1 + (S/P)^2, Dv] vision_model(...).last_hidden_state
  ids      [N, T] I32, bos then random tokens
  logits   [N, T, V] model(pixel_values, input_ids=ids).logits (causal, whole sequence)
  greedy   [N, G] I32 generate(pixel_values, max_length=MAX, num_beams=1, do_sample=False):
           bos first, pad (0) after a row's sep; __metadata__ max_length is MAX.
Weights are drawn afresh with a spread that makes every part matter (transformers'
init leaves the vision weights at 1e-10); each model draws from its own seed, and
the seed is advanced until every greedy step's top logit leads the next by 1e-3
of the logits' spread, so float rounding cannot change the ids.
"""
import json
import os
import shutil
import sys

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

sys.path.insert(0, os.path.dirname(__file__))
from fixture_io import write_safetensors  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "blip")

MODELS = {
    "tiny": dict(
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                    image_size=20, patch_size=5),
        text=dict(vocab_size=120, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=24, bos_token_id=118, sep_token_id=90,
                  pad_token_id=0, eos_token_id=2),
        n=2, t=7, max_length=12, seed=1),
    "wide": dict(
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                    image_size=24, patch_size=6, layer_norm_eps=1e-6),
        text=dict(vocab_size=250, hidden_size=40, intermediate_size=56, num_hidden_layers=1,
                  num_attention_heads=5, max_position_embeddings=32, bos_token_id=248, sep_token_id=89,
                  pad_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        n=3, t=9, max_length=16, seed=2, dtype=torch.float16),
    "sharded": dict(
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                    image_size=16, patch_size=4),
        text=dict(vocab_size=100, hidden_size=24, intermediate_size=32, num_hidden_layers=3,
                  num_attention_heads=2, max_position_embeddings=20, bos_token_id=98, sep_token_id=7,
                  pad_token_id=0, eos_token_id=2, tie_word_embeddings=False),
        top=dict(tie_word_embeddings=False),
        n=2, t=6, max_length=10, seed=3, max_shard_size="20KB"),
}

# Functions (folder, model, spec) called after write_folder has saved a model:
# the tokenizer's generator appends the writer of its files here.
EXTRA_WRITERS = []


def randomise(model):
    """Weights with a spread: linear and embedding N(0, 1/fan_in-ish), norms away from 1 and 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith(".weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif p.dim() >= 2 and "position" not in name and "word_embeddings" not in name:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn_like(p))


def build(spec, seed):
    torch.manual_seed(seed)
    config = BlipConfig(vision_config=spec["vision"], text_config=spec["text"], **spec.get("top", {}))
    model = BlipForConditionalGeneration(config).eval()
    randomise(model)
    dtype = spec.get("dtype", torch.float32)
    return model.to(dtype).to(torch.float32) if dtype != torch.float32 else model


def write_folder(folder, model, spec):
    """The model folder as transformers writes it, plus the image processor's config."""
    shutil.rmtree(folder, ignore_errors=True)
    dtype = spec.get("dtype", torch.float32)
    kwargs = {"max_shard_size": spec["max_shard_size"]} if "max_shard_size" in spec else {}
    model.to(dtype).save_pretrained(folder, safe_serialization=True, **kwargs)
    model.to(torch.float32)  # exact: build() rounded the weights to dtype already
    size = spec["vision"]["image_size"]
    BlipImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    for writer in EXTRA_WRITERS:
        writer(folder, model, spec)


def greedy_margin(out):
    """The smallest lead of a greedy step's top logit over the next, relative to the logits' spread."""
    worst = float("inf")
    for scores in out.scores:
        top = scores.double().topk(2, dim=-1).values
        spread = (scores.double().max(-1).values - scores.double().min(-1).values).clamp_min(1e-30)
        worst = min(worst, ((top[:, 0] - top[:, 1]) / spread).min().item())
    return worst


def reference(model, spec, gen):
    v, tc = spec["vision"], spec["text"]
    n, s = spec["n"], v["image_size"]
    pixels = torch.randn(n, 3, s, s, generator=gen)
    ids = torch.randint(0, tc["vocab_size"], (n, spec["t"]), generator=gen)
    ids[:, 0] = tc["bos_token_id"]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels).last_hidden_state
        logits = model(pixel_values=pixels, input_ids=ids).logits
        out = model.generate(pixel_values=pixels, max_length=spec["max_length"], num_beams=1, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
    tensors = {
        "pixels": pixels.permute(0, 2, 3, 1).contiguous(),
        "vision": vision.contiguous(),
        "ids": ids.to(torch.int32),
        "logits": logits.contiguous(),
        "greedy": out.sequences.to(torch.int32),
    }
    return tensors, greedy_margin(out)


def check_reload(folder, tensors):
    """transformers reads the folder back to the same outputs (the f16 save included)."""
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    pixels = tensors["pixels"].permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=tensors["ids"].long()).logits
    err = (logits - tensors["logits"]).abs().max().item()
    assert err <= 1e-5 * tensors["logits"].abs().max().item(), f"{folder}: reload differs by {err}"


def make(name, spec):
    seed = spec["seed"]
    while True:
        model = build(spec, seed)
        tensors, margin = reference(model, spec, torch.Generator().manual_seed(seed))
        if margin > 1e-3:
            break
        seed += 1000
    folder = os.path.join(FIXTURES, name)
    write_folder(folder, model, spec)
    write_safetensors(os.path.join(folder, "reference.safetensors"), tensors,
                      {"max_length": spec["max_length"], "seed": seed})
    check_reload(folder, tensors)
    files = sorted(os.listdir(folder))
    print(f"{name}: seed {seed}, greedy margin {margin:.3g}, greedy {tensors['greedy'].tolist()}, files {files}")


def main():
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        make(name, MODELS[name])


if __name__ == "__main__":
    main()
