#!/usr/bin/env python3
"""Fine-tuning a captioner: the reference of one step, for `diffc train-caption`
(tests/test_train_caption.c).

transformers 5.25 / torch 2.15. A BlipForConditionalGeneration with random
weights (transformers' own initialisation), the WordPiece tokenizer of
tests/fixtures/wordpiece_hub ([DEC] as bos) and a BlipImageProcessor of
24 x 24 pixels, saved as a user's model folder:

  tests/fixtures/train_caption/model/           config.json, model.safetensors,
      preprocessor files, tokenizer files
  tests/fixtures/train_caption/reference.safetensors
      pixel_values [2, 24, 24, 3] (NHWC), input_ids and labels [2, 16] (i32),
      the loss of model(pixel_values, input_ids, labels) in training mode with
      label smoothing 0.1, and grad.<name> for every parameter of the
      state_dict (the tied LM head's gradient is in the word embeddings')

The batch is built as BLIP's fine-tuning builds it: [DEC], the prompt's
tokens, the caption's, [SEP], padded to 16; labels are the ids with padding
and the prompt set to -100 (the decoder shifts them itself).

Check a trained folder (the C test cannot run Python; a developer runs this):
  /work/venv-torch/bin/python scripts/make_train_caption_fixtures.py --check OUTPUT_DIR IMAGE...
loads OUTPUT_DIR with BlipForConditionalGeneration.from_pretrained and
AutoProcessor, and prints each image's greedy caption. Run by hand on the
folder of test_learns_shapes (the same 8 images and command line, kept):
transformers 5.25 loaded the output folder, with no missing or unexpected
weights, and generated "a red window", "a blue ball", ... for every image,
the captions `diffc caption` gives.

Run: /work/venv-torch/bin/python scripts/make_train_caption_fixtures.py
"""
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (AutoProcessor, BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                          BlipImageProcessor, BlipProcessor)

FIX = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(FIX, "train_caption")
MODEL = os.path.join(OUT, "model")
PROMPT = "a picture of"
CAPTIONS = ["a red square", "a small blue circle on the grass"]
MAX_LENGTH = 16
SMOOTHING = 0.1


def make_model(tokenizer):
    torch.manual_seed(1515)
    cfg = BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 24, "patch_size": 8},
        text_config={"vocab_size": len(tokenizer) + 1, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id})
    return BlipForConditionalGeneration(cfg)


def batch(tokenizer, bos):
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)
    ids = np.full((len(CAPTIONS), MAX_LENGTH), tokenizer.pad_token_id, dtype=np.int64)
    for i, c in enumerate(CAPTIONS):
        row = [bos] + prompt + tokenizer.encode(c, add_special_tokens=False) + [tokenizer.sep_token_id]
        assert len(row) <= MAX_LENGTH
        ids[i, :len(row)] = row
    labels = ids.copy()
    labels[ids == tokenizer.pad_token_id] = -100
    labels[:, :1 + len(prompt)] = -100
    return torch.tensor(ids), torch.tensor(labels)


def make():
    tokenizer = BertTokenizer.from_pretrained(os.path.join(FIX, "wordpiece_hub"))
    processor = BlipProcessor(BlipImageProcessor(size={"height": 24, "width": 24}), tokenizer)
    model = make_model(tokenizer)
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(MODEL)
    processor.save_pretrained(MODEL)
    model = BlipForConditionalGeneration.from_pretrained(MODEL).train()
    model.text_decoder.label_smoothing = SMOOTHING
    torch.manual_seed(7)
    pixels = torch.randn(len(CAPTIONS), 3, 24, 24)
    ids, labels = batch(tokenizer, model.config.text_config.bos_token_id)
    out = model(pixel_values=pixels, input_ids=ids, labels=labels)
    out.loss.backward()
    tensors = {"pixel_values": pixels.permute(0, 2, 3, 1).contiguous(),
               "input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "loss": out.loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        tensors["grad." + name] = p.grad.detach().clone()
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    print("loss", out.loss.item(), "gradients", len(tensors) - 4)


def check(folder, images):
    from PIL import Image
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        for path in images:
            inputs = processor(images=Image.open(path), return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=20)
            print(f"{path}\t{processor.decode(ids[0], skip_special_tokens=True)}")
    print(f"loaded {folder} with BlipForConditionalGeneration.from_pretrained and generated")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--check":
        check(sys.argv[2], sys.argv[3:])
    else:
        make()
