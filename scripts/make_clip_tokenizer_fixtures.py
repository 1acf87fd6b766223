#!/usr/bin/env python3
"""Reference tokenizations for tests/test_bpe.c, from transformers' CLIPTokenizer.

transformers 5.25 / tokenizers 0.23 / diffusers 0.42.1. In transformers 5
CLIPTokenizer is the Rust `tokenizers` backend (NFC, \\s+ -> " ", lower case,
the CLIP split regex, ByteLevel, BPE with "</w>", the ByteLevel decoder and
"</w>" -> " " then strip()); CLIPTokenizerFast is the same class (checked
below), and there is no Python ("slow", ftfy) tokenizer any more.

The real CLIP vocabulary: open_clip_torch's bpe_simple_vocab_16e6.txt.gz
(pip download open_clip_torch --no-deps). CLIP's files are built from it as
OpenAI's simple_tokenizer builds them: merges = lines 1..48894 after the
"#version" line; vocab = the 256 byte characters (bytes_to_unicode order), the
same with "</w>", each merge's result, <|startoftext|>, <|endoftext|>: 49408
ids (its first line is "<name>#version: 0.2": the header of HF's merges.txt
is "#version: 0.2"). Only merges.txt is committed (gzip'ed, ~200 KB): the test rebuilds
vocab.json from it the same way.

  tests/fixtures/clip_real/merges.txt.gz       the 48894 merges with the header line
  tests/fixtures/clip_real/sd1/, sd2/          tokenizer_config.json +
      special_tokens_map.json as runwayml/stable-diffusion-v1-5 and
      stabilityai/stable-diffusion-2-1 ship them (SD-2.x pads with "!", id 0)
  tests/fixtures/clip_tiny/                    a tiny BPE trained here with
      `tokenizers`, in the tokenizer/ layout of a diffusers pipeline saved
      with transformers 4.3x: vocab.json, merges.txt, tokenizer_config.json
      (added_tokens_decoder), special_tokens_map.json
  tests/fixtures/clip_tiny_v5/                 the same tokenizer saved by
      CLIPTokenizer.save_pretrained here: tokenizer.json + tokenizer_config.json
  tests/fixtures/clip_expected.json            for each layout and each text of
      the corpus: ids with bos/eos, ids padded and truncated as the
      StableDiffusionPipeline asks (padding="max_length", max_length=77,
      truncation=True), decode() of the ids with and without special
      tokens, and decodes of random id lists.

Run: /work/venv-torch/bin/python scripts/make_clip_tokenizer_fixtures.py
"""
import glob
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile

import diffusers
import tokenizers
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
N_MERGES = 49152 - 256 - 2  # as OpenAI's simple_tokenizer cuts the file
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

CORPUS = [
    "", " ", "   \t\n ", "a photo of an astronaut riding a horse on mars",
    "A PHOTOGRAPH Of A Cat, Highly Detailed, 8K, trending on ArtStation",
    "Hello, World!", "un café très élégant à la crème brûlée", "ÀÉÎÕÜ ñ Ç ØÅ Æ œ ß naïve résumé",
    "東京タワーの写真", "한국어 텍스트", "猫と犬が公園で遊ぶ", "日本語 中文 汉字",
    "🐱 cat 🐶!! 👍🏽 🇫🇷 👨‍👩‍👧 ❤️", "don't stop... it's fine?! isn't it", "I'm we've they're he'll she'd",
    "DON'T IT'S I'M WE'VE THEY'RE", "'s 't 're 've 'm 'll 'd", "''s '''t ''", "rock'n'roll o'clock",
    "don\u2019t it\u2019s", "$100+ <html> a_b c-d {x|y} ~`^ @home #tag", "...!!!???,,,;;;", "'''\"\"\"",
    " . , ! ? ", "((masterpiece)), [best quality], {{ultra detailed}}, (cat:1.2)",
    "a <|startoftext|> b <|endoftext|> c", "<|startoftext|><|endoftext|>", "<|STARTOFTEXT|> x <|EndOfText|>",
    "x<|startoftext|>!!", "!<|endoftext|>!", "<|ENDOFTEXT|>!! <|EndOfText|>'s", "?<|ENDOFTEXT|>?", "<|startoftext|>", "<|endoftext|>", "<|endoftext", "<| startoftext |>",
    "0123456789 3.14159 1,000,000 ½ ² Ⅻ ٣ ३", "soft\u00adhyphen zero\u200bwidth joiner\u200d bom\ufeff",
    "\u0007bell\u001bescape\u007fdel\u0085nel", "\x1c\x1d\x1e\x1f info separators",
    "line\u2028sep para\u2029sep nbsp\u00a0here ideographic\u3000space ogham\u1680x",
    "İstanbul ǅemal ǲ ΣΊΣΥΦΟΣ σίσυφος", "ﬁne ligature ∑ ＡＢＣ！ Ａ", "replacement \ufffd char",
    "مُحَمَّد", "हिन्दी", "e\u0301 and \u0301 alone cafe\u0301", "Ελληνικά κείμενα", "Кириллица Текст",
    "\U0001d400\U0001d41a math bold", "word\u0300\u0316 stacked marks", "\U00020000\U0002a700 ext cjk",
    "private \ue000x use", "a" * 150, "b" * 100, "supercalifragilisticexpialidocious" * 4,
    "x" * 1000, "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Tab\tseparated\tvalues\r\nCRLF", "trailing space ", "\nleading newline", "a b  c   d",
    " ".join(["word"] * 100), " ".join(str(i) for i in range(60)), "!" * 300, "🐱" * 40,
    "a highly detailed matte painting of a castle on a hill at sunset, by greg rutkowski and "
    "thomas kinkade, trending on artstation, octane render, unreal engine, 4k, 8k, hdr, "
    "volumetric lighting, cinematic, dramatic, epic composition, beautiful, intricate, elegant",
]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def real_merges():
    """The merges lines of open_clip's vocabulary file, header first."""
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "open_clip_torch", "--no-deps", "-q", "-d", tmp],
                   check=True)
    with zipfile.ZipFile(glob.glob(os.path.join(tmp, "open_clip_torch-*.whl"))[0]) as z:
        lines = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8").split("\n")
    shutil.rmtree(tmp)
    assert lines[0].endswith("#version: 0.2")  # the line starts with the tar member's name
    return "#version: 0.2", lines[1:N_MERGES + 1]


def real_vocab(merges):
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges] + [BOS, EOS]
    assert len(vocab) == 49408 == len(set(vocab))
    return {t: i for i, t in enumerate(vocab)}


def added(content, normalized=True, legacy=False):
    a = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **a} if legacy else {**a, "special": True}


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, separators=(",", ":") if indent is None else None)
        f.write("\n")


def sd_configs(folder, pad):
    """tokenizer_config.json + special_tokens_map.json as the SD-1.5 / SD-2.1 repos have them."""
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": added(BOS, legacy=True), "do_lower_case": True,
        "eos_token": added(EOS, legacy=True), "errors": "replace", "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14", "pad_token": EOS,
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(EOS, legacy=True)})
    strip = lambda a: {k: v for k, v in a.items() if k not in ("__type", "special")}
    write_json(os.path.join(folder, "special_tokens_map.json"), {
        "bos_token": strip(added(BOS)), "eos_token": strip(added(EOS)), "pad_token": pad,
        "unk_token": strip(added(EOS))})


def write_vocab_merges(folder, vocab, header, merges):
    write_json(os.path.join(folder, "vocab.json"), vocab, indent=None)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(header + "\n" + "".join(m + "\n" for m in merges))


def train_tiny(texts):
    """A small byte-level BPE with CLIP's "</w>", on the corpus words."""
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    alphabet = [c for c in bytes_to_unicode().values() if c.isascii()]
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False)
    tok.train_from_iterator([t.lower() for t in texts], trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    vocab = dict(model["vocab"])
    for extra in (BOS, EOS):
        vocab[extra] = len(vocab)
    return vocab, merges


def write_tiny(folder, vocab, merges):
    write_vocab_merges(folder, vocab, "#version: 0.2", merges)
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(vocab[BOS]): added(BOS), str(vocab[EOS]): added(EOS)},
        "bos_token": BOS, "clean_up_tokenization_spaces": True, "do_lower_case": True, "eos_token": EOS,
        "errors": "replace", "model_max_length": 77, "pad_token": EOS, "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS})
    write_json(os.path.join(folder, "special_tokens_map.json"), {
        "bos_token": {k: v for k, v in added(BOS).items() if k != "special"},
        "eos_token": {k: v for k, v in added(EOS).items() if k != "special"},
        "pad_token": EOS, "unk_token": {k: v for k, v in added(EOS).items() if k != "special"}})


def write_tiny_v5(folder, vocab, merges):
    t = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    t.save_pretrained(folder)


def random_texts(rng, count):
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
    pool += list("éèêëàâäôöûüçñÉÀÇÑßøåæœİΣ") + ["\u0301", "\u0308", "\u0327"]
    pool += list("東京写真猫犬山川日本中国한국어ひらがなカタカナ") + ["🐱", "🐶", "👍", "\u200d", "\ufe0f"]
    pool += list(".,!?;:'\"()[]{}-_/\\@#$%^&*+=<>|~`") + ["'s", "'t", "'re", "'ll", "\u2019"]
    pool += ["\t", "\n", "\r", "\u000b", "\u0001", "\u00ad", "\u200b", "\u00a0", "\u3000", "\ufffd", "\x1f"]
    pool += [" "] * 20 + [BOS, EOS, "<|", "|>", "<|START", "OFTEXT|>"]
    pool += [w + " " for w in "a photo of the cat dog astronaut riding horse painting detailed".split()] * 3
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(count)]


def record(folder, texts, rng):
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok) is CLIPTokenizer is CLIPTokenizerFast, type(tok)
    cases = []
    for text in texts:
        ids = tok(text)["input_ids"]
        padded = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
        cases.append({"text": text, "ids": ids, "ids_padded": padded,
                      "decoded": tok.decode(ids, skip_special_tokens=True),
                      "decoded_raw": tok.decode(ids, skip_special_tokens=False)})
    decodes = []
    for _ in range(40):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 30))]
        decodes.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True),
                        "decoded_raw": tok.decode(ids, skip_special_tokens=False)})
    return {"folder": folder[len(OUT) + 1:], "size": len(tok), "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "unk_token_id": tok.unk_token_id,
            "model_max_length": tok.model_max_length, "cases": cases, "decodes": decodes}


def main():
    rng = random.Random(16)
    header, merges = real_merges()
    vocab = real_vocab(merges)
    texts = CORPUS + random_texts(rng, 100)
    real = os.path.join(OUT, "clip_real")
    shutil.rmtree(real, ignore_errors=True)
    os.makedirs(real)
    with gzip.GzipFile(os.path.join(real, "merges.txt.gz"), "wb", compresslevel=9, mtime=0) as f:
        f.write((header + "\n" + "".join(m + "\n" for m in merges)).encode("utf-8"))
    results = []
    work = tempfile.mkdtemp()
    for name, pad in (("sd1", EOS), ("sd2", "!")):
        os.makedirs(os.path.join(real, name))
        sd_configs(os.path.join(real, name), pad)
        full = os.path.join(work, name)
        shutil.copytree(os.path.join(real, name), full)
        write_vocab_merges(full, vocab, header, merges)
        r = record(full, texts, rng)
        r["folder"] = "clip_real/" + name
        results.append(r)
    shutil.rmtree(work)
    tiny_vocab, tiny_merges = train_tiny(CORPUS + random_texts(rng, 300))
    for name, write in (("clip_tiny", write_tiny), ("clip_tiny_v5", write_tiny_v5)):
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        write(folder, tiny_vocab, tiny_merges)
        results.append(record(folder, texts, rng))
    write_json(os.path.join(OUT, "clip_expected.json"),
               {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "diffusers": diffusers.__version__, "layouts": results}, indent=None)


if __name__ == "__main__":
    main()
