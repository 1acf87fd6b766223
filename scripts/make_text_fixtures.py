#!/usr/bin/env python3
"""Reference tokenizations for tests/test_text.c, from transformers' BertTokenizer.

transformers 5.25 / tokenizers 0.23 (the BertTokenizer there is the Rust
`tokenizers` backend: BertNormalizer, BertPreTokenizer, WordPiece, the
WordPiece decoder with cleanup, then transformers' clean_up_tokenization).
No hub downloads: a WordPiece vocab (~2000 tokens) is trained with
`tokenizers` on a corpus made up here, and written in three folder layouts:

  tests/fixtures/wordpiece_hub/    vocab.txt + tokenizer.json +
      tokenizer_config.json (added_tokens_decoder, clean_up_tokenization_spaces,
      model_max_length 512) + special_tokens_map.json: the files of
      Salesforce/blip-image-captioning-base, [DEC] added as its bos token
  tests/fixtures/wordpiece_v5/     what save_pretrained writes in
      transformers 5.25: tokenizer.json + tokenizer_config.json only
  tests/fixtures/wordpiece_cased/  vocab.txt + tokenizer_config.json with
      do_lower_case false, strip_accents true, tokenize_chinese_chars false
      and added tokens that are not special: normalized, lstrip/rstrip, single_word
  tests/fixtures/wordpiece_nostrip/ vocab.txt + tokenizer_config.json that
      lower-cases without stripping accents and names [DEC] only as bos_token

  tests/fixtures/wordpiece_expected.json: for each layout, each text of the
      test corpus (Unicode, accents, CJK, emoji, control characters,
      punctuation runs, long words, empty strings, special tokens in the
      text) with ids (without and with [CLS]/[SEP]) and decode() of them
      (with and without skip_special_tokens), and decodes of random id lists.

Run: /work/venv-torch/bin/python scripts/make_text_fixtures.py
"""
import json
import os
import random
import shutil

import tokenizers
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, BertTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

WORDS = """a an the cat cats dog dogs sitting sits on in under over table tables chair man woman
people person child children red green blue yellow black white small large big little picture
photo photograph image of with and or two three four standing running playing park street city
building buildings car cars bus train field grass tree trees sky cloud clouds water beach ocean
boat boats bird birds flying holding umbrella kitchen room bed bathroom toilet sink plate food
pizza sandwich banana apple orange cake bowl cup glass bottle phone computer laptop keyboard
mouse screen window door wall floor road sign stop traffic light horse horses cow sheep elephant
giraffe zebra bear teddy kite frisbee skateboard surfboard snow ski wave tennis racket ball bat
baseball player game field wearing shirt hat jacket looking at next to near front back top side
unaffable unbelievable running jumped jumping quickly happiness wonderful don't it's isn't
café très élégant naïve résumé façade über straße niño señor crème brûlée déjà vu
東京 写真 猫 犬 山 川 日本 中国 北京 上海 한국어 텍스트 고양이 카타카나 ひらがな
""".split()
PUNCT = list(".,!?;:'\"()[]{}-_/\\@#$%^&*+=<>|~`") + ["...", "?!", "«", "»", "—", "–", "“", "”"]

CORPUS = [
    "", " ", "   \t\n ", "Hello, World!", "A cat sitting on a table.",
    "a picture of two dogs playing in the park", "un café très élégant", "ÀÉÎÕÜ ñ Ç ØÅ Æ œ ß",
    "東京タワーの写真", "한국어 텍스트", "猫と犬が公園で遊ぶ", "🐱 cat 🐶!! 👍🏽 🇫🇷 👨‍👩‍👧",
    "don't stop... it's fine?! isn't it", "$100+ <html> a_b c-d {x|y} ~`^ @home #tag",
    "soft\u00adhyphen zero\u200bwidth joiner\u200d bom\ufeff", "\u0007bell\u001bescape\u007fdel\u0085nel",
    "line\u2028sep para\u2029sep nbsp\u00a0here ideographic\u3000space", "İstanbul ǅemal ǲ",
    "ﬁne ligature Ⅻ ∑ x² ＡＢＣ！ ½", "replacement \ufffd char", "[CLS] a [SEP] b [DEC]x[MASK]",
    "[cls] lower [sep]", "   [SEP]   ", "[UNK][PAD][DEC]", "ΣΊΣΥΦΟΣ σίσυφος", "مُحَمَّد", "हिन्दी",
    "e\u0301 and \u0301 alone", "private \ue000x use", "a" * 150, "b" * 100, "c" * 101,
    "unaffable" * 12, "«quoted» „text“ — dash – —", "...!!!???,,,;;;", "'''\"\"\"", " . , ! ? ",
    "do not do n't I 'm we 've they 're he 's", "Tab\tseparated\tvalues\r\nCRLF",
    "Ǆ ǅ ǆ Ά ΐ ﬃ ẞ", "\U0001d400\U0001d41a math bold", "word\u0300\u0316 stacked marks",
    "mañana Ñandú", "Ελληνικά κείμενα", "Кириллица Текст", "\u3042\u30a2\u4e00\u9fff\u3400\uf900",
    "\U00020000\U0002a700 ext cjk", "trailing space ", "\nleading newline", "a b  c   d",
    "Hello [MASK] world", "[MASK]", "cafe\u0301 ", "normalized [note] token [NOTE]",
    "Zz Zzz aZz Zz. (Zz) Zz_ Zzé éZz Zz\u0301 Zz1 _Zz", "ZzZz [NOTE]Zz",
]


def make_corpus_text(rng):
    """Sentences from WORDS, made-up words of a few syllables, and PUNCT: what
    the vocab is trained on."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ["a", "e", "i", "o", "u", "ai", "ou", "é", "ü"]]
    made_up = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = []
    for _ in range(6000):
        n = rng.randint(3, 12)
        words = [rng.choice(WORDS if rng.random() < 0.5 else made_up) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(rng.choice(PUNCT))
        text = " ".join(words)
        lines.append(text.capitalize() if rng.random() < 0.5 else text)
    return lines


def random_texts(rng, count):
    """Random strings over a pool of letters, marks, CJK, emoji, punctuation,
    controls and spaces (characters assigned by Unicode 8.0, see wordpiece.c)."""
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
    pool += list("éèêëàâäôöûüçñÉÀÇÑßøåæœ") + ["\u0301", "\u0308", "\u0327", "\u0345"]
    pool += list("東京写真猫犬山川日本中国한국어ひらがなカタカナ") + ["🐱", "🐶", "👍", "\u200d", "\ufe0f"]
    pool += PUNCT + ["\t", "\n", "\r", "\u000b", "\u0001", "\u00ad", "\u200b", "\u00a0", "\u3000", "\ufffd", "\ue000"]
    pool += [" "] * 20 + ["[SEP]", "[DEC]", "[MASK]", "##", "#"]
    pool += [w + " " for w in WORDS[:80]]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def train_vocab(lines, lowercase):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=True if not lowercase else None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=2000, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    vocab = tok.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def added(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False):
    return {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": rstrip,
            "single_word": single_word, "special": special}


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_vocab_txt(path, tokens):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in tokens))


def tokenizer_json(tokens, added_tokens, lowercase):
    """tokenizer.json as the Rust library serialises a BERT tokenizer."""
    ids = {t: i for i, t in enumerate(tokens)}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [dict(id=i, **{k: v for k, v in a.items()}) for i, a in added_tokens],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids},
    }


def write_hub(folder, tokens):
    """The layout of Salesforce/blip-image-captioning-base (saved by transformers 4.x)."""
    dec_id = len(tokens)
    specials = [(tokens.index(t), added(t)) for t in SPECIAL] + [(dec_id, added("[DEC]"))]
    write_vocab_txt(os.path.join(folder, "vocab.txt"), tokens)
    write_json(os.path.join(folder, "tokenizer.json"), tokenizer_json(tokens, specials, True))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "added_tokens_decoder": {str(i): a for i, a in specials},
        "bos_token": "[DEC]", "clean_up_tokenization_spaces": True, "cls_token": "[CLS]",
        "do_basic_tokenize": True, "do_lower_case": True, "mask_token": "[MASK]", "model_max_length": 512,
        "never_split": None, "pad_token": "[PAD]", "processor_class": "BlipProcessor", "sep_token": "[SEP]",
        "strip_accents": None, "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]"})
    write_json(os.path.join(folder, "special_tokens_map.json"), {
        "bos_token": "[DEC]", "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
        "sep_token": "[SEP]", "unk_token": "[UNK]"})


def write_v5(folder, tokens):
    """What save_pretrained writes in this transformers, [DEC] added as BLIP adds it."""
    tmp = folder + ".tmp"
    t = BertTokenizer(vocab={tok: i for i, tok in enumerate(tokens)})
    t.add_special_tokens({"bos_token": "[DEC]"})
    t.save_pretrained(tmp)
    for name in os.listdir(tmp):
        shutil.move(os.path.join(tmp, name), os.path.join(folder, name))
    os.rmdir(tmp)


def write_cased(folder, tokens):
    """vocab.txt alone, other flags, a non-special added token matched after normalisation."""
    write_vocab_txt(os.path.join(folder, "vocab.txt"), tokens)
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "added_tokens_decoder": {
            **{str(tokens.index(t)): added(t) for t in SPECIAL},
            str(len(tokens)): added("[NOTE]", special=False, normalized=True, lstrip=True, rstrip=True),
            str(len(tokens) + 1): added("[DEC]"),
            str(len(tokens) + 2): added("Zz", special=False, normalized=False, single_word=True)},
        "bos_token": "[DEC]", "do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 77, "tokenizer_class": "BertTokenizer"})


def write_nostrip(folder, tokens):
    """Lower case kept apart from accent stripping (İ lower-cases to i + U+0307)."""
    write_vocab_txt(os.path.join(folder, "vocab.txt"), tokens)
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "bos_token": "[DEC]", "do_lower_case": True, "strip_accents": False, "tokenizer_class": "BertTokenizer"})


def record(folder, texts, rng):
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ == "BertTokenizer", type(tok)
    cases = []
    for text in texts:
        plain = tok(text, add_special_tokens=False)["input_ids"]
        full = tok(text)["input_ids"]
        cases.append({"text": text, "ids": plain, "ids_special": full,
                      "decoded": tok.decode(full, skip_special_tokens=True),
                      "decoded_raw": tok.decode(full, skip_special_tokens=False)})
    decodes = []
    n = len(tok)
    for _ in range(40):
        ids = [rng.randrange(n) for _ in range(rng.randint(0, 20))]
        decodes.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True),
                        "decoded_raw": tok.decode(ids, skip_special_tokens=False)})
    return {"folder": os.path.basename(folder), "size": n, "bos_token_id": tok.bos_token_id,
            "cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id,
            "unk_token_id": tok.unk_token_id, "mask_token_id": tok.mask_token_id,
            "model_max_length": tok.model_max_length if tok.model_max_length < 1 << 31 else None,
            "cases": cases, "decodes": decodes}


def main():
    rng = random.Random(15)
    lines = make_corpus_text(rng)
    uncased, cased = train_vocab(lines, True), train_vocab(lines, False)
    texts = CORPUS + random_texts(rng, 150) + rng.sample(lines, 30)
    results = []
    for name, write, tokens in (("wordpiece_hub", write_hub, uncased), ("wordpiece_v5", write_v5, uncased),
                                ("wordpiece_cased", write_cased, cased), ("wordpiece_nostrip", write_nostrip, uncased)):
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        write(folder, tokens)
        results.append(record(folder, texts, rng))
    write_json(os.path.join(OUT, "wordpiece_expected.json"),
               {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "layouts": results}, indent=None)


if __name__ == "__main__":
    main()
