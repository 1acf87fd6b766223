#!/usr/bin/env python3
"""A tiny captioner end to end, for `diffc caption` (tests/test_caption.c).

transformers 5.25 / torch 2.15: a BlipForConditionalGeneration with random
weights (text weights drawn wide, so that the next token wins by a clear
margin, checked below), the WordPiece tokenizer of
tests/fixtures/wordpiece_hub ([DEC] as bos) and a BlipImageProcessor of
24 x 24 pixels, saved with save_pretrained as a user's model folder:

  tests/fixtures/caption_tiny/          config.json, model.safetensors,
      generation_config.json, preprocessor_config.json, tokenizer files
  tests/fixtures/caption_images/        three PNGs (RGB, gray, RGBA) in two
      subfolders and a damaged one that the captioner must name and skip
  tests/fixtures/caption_expected.json  what AutoProcessor + generate() +
      decode(skip_special_tokens=True) give for each image: greedy, beam
      search (3 beams), a prompt, min_length with a repetition penalty

Run: /work/venv-torch/bin/python scripts/make_caption_fixtures.py
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (AutoProcessor, BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                          BlipImageProcessor, BlipProcessor)

FIX = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
MODEL = os.path.join(FIX, "caption_tiny")
IMAGES = os.path.join(FIX, "caption_images")
RUNS = {
    "greedy": {},
    "beam3": {"num_beams": 3},
    "prompt": {"prompt": "a picture of"},
    "min_rep": {"min_length": 12, "repetition_penalty": 1.5},
}


def make_images(rng):
    shutil.rmtree(IMAGES, ignore_errors=True)
    os.makedirs(os.path.join(IMAGES, "a"))
    os.makedirs(os.path.join(IMAGES, "b"))
    Image.fromarray(rng.integers(0, 256, (28, 32, 3), dtype=np.uint8)).save(os.path.join(IMAGES, "a", "noise.png"))
    # the width grows and the height shrinks: Pillow 13 resizes vertically first
    y, x = np.mgrid[0:30, 0:20]
    gray = ((x * 7 + y * 5) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(os.path.join(IMAGES, "b", "gray.png"))
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(os.path.join(IMAGES, "a", "rgba.png"))
    with open(os.path.join(IMAGES, "a", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 40, dtype=np.uint8)))
    return ["a/noise.png", "a/rgba.png", "b/gray.png"]


def make_model(tokenizer):
    torch.manual_seed(15)
    cfg = BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 24, "patch_size": 8, "initializer_range": 0.5},
        text_config={"vocab_size": len(tokenizer) + 1, "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 40,
                     "bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "initializer_range": 1.0})
    model = BlipForConditionalGeneration(cfg).eval()
    return model


def assert_clear_margins(model, inputs, kwargs):
    """Each greedy step's winner beats the runner-up by 1e-3 (no near ties)."""
    out = model.generate(**inputs, output_scores=True, return_dict_in_generate=True, **kwargs)
    for s in out.scores:
        top = torch.topk(s.float(), 2, dim=-1).values
        assert (top[:, 0] - top[:, 1] > 1e-3).all(), "near tie: draw other weights"


def main():
    rng = np.random.default_rng(15)
    names = make_images(rng)
    tok_dir = os.path.join(FIX, "wordpiece_hub")
    tokenizer = BertTokenizer.from_pretrained(tok_dir)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 24, "width": 24}), tokenizer)
    model = make_model(tokenizer)
    shutil.rmtree(MODEL, ignore_errors=True)
    model.save_pretrained(MODEL)
    processor.save_pretrained(MODEL)

    processor = AutoProcessor.from_pretrained(MODEL)
    model = BlipForConditionalGeneration.from_pretrained(MODEL).eval()
    images = [Image.open(os.path.join(IMAGES, n)) for n in names]  # as users pass them: RGBA, L
    runs = {}
    with torch.no_grad():
        for run, options in RUNS.items():
            kwargs = {k: v for k, v in options.items() if k != "prompt"}
            captions = []
            for image in images:
                if "prompt" in options:
                    inputs = processor(images=image, text=options["prompt"], return_tensors="pt")
                else:
                    inputs = processor(images=image, return_tensors="pt")
                if kwargs.get("num_beams", 1) == 1:
                    assert_clear_margins(model, inputs, kwargs)
                ids = model.generate(**inputs, **kwargs)
                captions.append(processor.decode(ids[0], skip_special_tokens=True))
            runs[run] = {"options": options, "captions": dict(zip(names, captions))}
    with open(os.path.join(FIX, "caption_expected.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "runs": runs}, f,
                  indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
