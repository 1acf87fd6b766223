#!/usr/bin/env python3
"""Reference generations for tests/test_text_generate.c, from transformers' generate().

The language model is a toy both sides compute exactly in float32: for a
sequence x_0..x_t the logits of the next token are

    (w[x_t] + p[t]) + h[(sum_i x_i * (i + 1)) % N_HASH]

with w [V, V], p [MAX_POS, V] and h [N_HASH, V] random (p's eos column rises
with t, so sequences end at different lengths; the hash of the whole prefix
makes beams that share a last token differ). It is a PreTrainedModel +
GenerationMixin without a cache, so transformers' real generate() (greedy,
beam search, its logits processors and stopping rules) makes the ids.

Writes tests/fixtures/generate.safetensors:
  toy.w, toy.p, toy.h      the table (f32)
  CASE.prefix              [B, L] the prompt ids (i32)
  CASE.ids                 [n, T] generate()'s sequences, padded as it pads (i32)
  CASE.lengths             [n] tokens before the padding (beam search: from
                           beam_indices; greedy: through the first eos) (i32)
  CASE.scores              [n] beam search: sequences_scores (f32)
__metadata__: "cases" (comma-separated), CASE.KEY = the generate() kwargs.

Made with transformers 5.25.0 (torch 2.15), from PyPI:
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch "transformers==5.25.0"
  /tmp/venv/bin/python scripts/make_generate_fixtures.py
"""
import os
import sys

import torch
import transformers
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import write_safetensors  # noqa: E402

V, MAX_POS, N_HASH, EOS, BOS = 16, 32, 7, 2, 1
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "generate.safetensors")


class ToyConfig(PretrainedConfig):
    model_type = "dc_toy_lm"


class ToyLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config, w, p, h):
        super().__init__(config)
        self.w, self.p, self.h = (torch.nn.Parameter(t, requires_grad=False) for t in (w, p, h))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids, **kwargs):
        n = input_ids.shape[1]
        pos = torch.arange(n)
        key = torch.cumsum(input_ids * (pos + 1), dim=1) % N_HASH
        return CausalLMOutput(logits=(self.w[input_ids] + self.p[pos][None]) + self.h[key])


def table(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, V, generator=g) * 1.5
    p = torch.randn(MAX_POS, V, generator=g) * 0.5
    p[:, EOS] += torch.arange(MAX_POS, dtype=torch.float32) * 0.25 - 2.0
    h = torch.randn(N_HASH, V, generator=g) * 1.5
    return w, p, h


# name -> generate() kwargs; prefixes are [batch, len] (no pad id in them)
CASES = {
    "greedy": dict(max_length=14),
    "greedy_min": dict(max_length=16, min_length=10),
    "greedy_rep": dict(max_length=14, repetition_penalty=1.6),
    "greedy_new": dict(max_new_tokens=6, pad_token_id=3),
    "beam2": dict(num_beams=2, max_length=14),
    "beam3_es": dict(num_beams=3, max_length=16, early_stopping=True, length_penalty=0.6),
    "beam3_lp0": dict(num_beams=3, max_length=14, length_penalty=0.0),
    "beam4_never": dict(num_beams=4, max_length=16, early_stopping="never", length_penalty=2.0),
    "beam4_neg": dict(num_beams=4, max_length=14, early_stopping="never", length_penalty=-0.5),
    "beam3_min_rep": dict(num_beams=3, max_length=16, min_length=9, repetition_penalty=1.3),
    "beam4_ret": dict(num_beams=4, max_length=12, num_return_sequences=3, pad_token_id=3),
    "beam3_prompt": dict(num_beams=3, max_length=18, length_penalty=1.5, early_stopping=True),
    # max_length unset: 20 new tokens, at most the model's max_position_embeddings
    "greedy_default": dict(min_length=40),
    "beam2_default_cap": dict(num_beams=2, max_positions=9),
}
# Cases found by trying variants of transformers against itself: each comes out
# differently if a rule is changed (the named one), with these prefixes.
FOUND = {
    "greedy_min15": ([[1, 12], [1, 8], [1, 4]], dict(max_length=20, min_length=15)),  # min_length - 1
    "beam3_min12": ([[1, 12], [1, 8], [1, 4]], dict(num_beams=3, max_length=20, min_length=12)),  # min_length - 1
    "greedy_rep_once": ([[1, 7, 4], [1, 8, 5], [1, 6, 11]], dict(max_length=14, repetition_penalty=2.5)),  # per occurrence
    "beam3_rep_once": ([[1, 12], [1, 8], [1, 4]], dict(num_beams=3, max_length=20, repetition_penalty=1.8)),  # per occurrence
    "beam2_heuristic": ([[1, 5, 4], [1, 8, 7], [1, 8, 8]], dict(num_beams=2, max_length=20)),  # no early stop
}


def prefix_for(name, g):
    batch = 4 if name.startswith("beam3") else 3
    length = 4 if name.endswith("prompt") else 2
    ids = torch.randint(4, V, (batch, length), generator=g)
    ids[:, 0] = BOS
    return ids


def run(model, name, kw, prefix):
    kw = {**dict(eos_token_id=EOS, pad_token_id=0, use_cache=False, do_sample=False), **kw}
    if "max_positions" in kw:  # the model's max_position_embeddings, not a generate() argument
        model.config.max_position_embeddings = kw["max_positions"]
    args = {k: v for k, v in kw.items() if k != "max_positions"}
    out = model.generate(prefix, return_dict_in_generate=True, output_scores=True, **args)
    if "max_positions" in kw:
        del model.config.max_position_embeddings
    ids = out.sequences
    if kw.get("num_beams", 1) > 1:
        lengths = prefix.shape[1] + (out.beam_indices >= 0).sum(dim=1)
        scores = out.sequences_scores
    else:
        lengths = []
        for row in ids:
            eos = (row[prefix.shape[1]:] == EOS).nonzero()
            lengths.append(prefix.shape[1] + int(eos[0]) + 1 if len(eos) else len(row))
        lengths, scores = torch.tensor(lengths), None
    return kw, ids, lengths, scores


def main():
    w, p, h = table(2026)
    model = ToyLM(ToyConfig(vocab_size=V), w, p, h).eval()
    g = torch.Generator().manual_seed(7)
    tensors = {"toy.w": w, "toy.p": p, "toy.h": h}
    cases = {name: (prefix_for(name, g), kw) for name, kw in CASES.items()}
    cases.update({name: (torch.tensor(prefix), kw) for name, (prefix, kw) in FOUND.items()})
    meta = {"cases": ",".join(cases), "transformers": transformers.__version__}
    for name, (prefix, kw) in cases.items():
        with torch.no_grad():
            kw, ids, lengths, scores = run(model, name, kw, prefix)
        tensors[f"{name}.prefix"] = prefix.to(torch.int32)
        tensors[f"{name}.ids"] = ids.to(torch.int32)
        tensors[f"{name}.lengths"] = lengths.to(torch.int32)
        if scores is not None:
            tensors[f"{name}.scores"] = scores.float()
        for k, v in kw.items():
            if k not in ("use_cache",):
                meta[f"{name}.{k}"] = str(v).lower() if isinstance(v, bool) else v
        print(name, ids.shape[1], lengths.tolist(), ids.tolist() if "-v" in sys.argv else "")
    write_safetensors(OUT, tensors, meta)


if __name__ == "__main__":
    main()
