"""The Phi-3 tokenizers through the one interface: phi-3-mini's tokenizer.json (fast) against the
SentencePiece model itself (slow), chat tokens and the chat template; phi-3-small's tiktoken
encoding against tiktoken's own cl100k_base; round trips, EOS, batches."""
import hashlib
import json
import re

import pytest

from phi_lib.data.tokenizer import (CL100K_PATTERN, PHI3_SMALL_VOCAB, load_tokenizer,
                                    phi3_small_special_tokens)
from phi_lib.paths import data_path

pytestmark = pytest.mark.unit

TEXTS = [
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n\tdef push(self, x):\n"
    "\t\tself.items.append(x)  # two  spaces\n" + " " * 40 + "deep = 1\n" + "\t" * 12 + "tabs\n",
    " leading space", "   three leading", "trailing   ", "\n\n\nnewlines\r\nCRLF\r\n",
    "naïve café, Ünïcödé: 中文 日本語 한국어 العربية עברית 🙂👍🏽 \u200b zero-width",
    "numbers 12345678 3.14159 1e-7 0x1F 1234567890123", "x" * 3000, "", " ", "\t", "mixed\t \t  tabs and spaces  \n",
    "It's a can't-won't they'll I'd we're you've", "emoji only 🦙🦙🦙",
]


@pytest.fixture(scope="module")
def mini():
    return load_tokenizer("phi-3-mini")


@pytest.fixture(scope="module")
def small():
    return load_tokenizer("phi-3-small")


@pytest.fixture(scope="module")
def sentencepiece_model():
    """The slow tokenizer: SentencePiece itself on `tokenizer.model`."""
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(data_path("tokenizers/phi-3-mini/tokenizer.model")))


# ----------------------------------------------------------------------------- phi-3-mini
def test_mini_sizes_and_special_ids(mini):
    added = json.loads(data_path("tokenizers/phi-3-mini/added_tokens.json").read_text())
    assert len(mini) == 32011 and len(added) == 11
    assert all(mini.token_to_id(t) == i for t, i in added.items())
    assert (mini.bos_id, mini.eos_id, mini.pad_id) == (1, 32000, 32000)  # <s>, <|endoftext|>
    assert mini.id_to_token(32007) == "<|end|>"


def _slow_encode(sp, text: str, added: list[dict]) -> list[int]:
    """The slow path: split at the added tokens (absorbing the whitespace after those marked
    rstrip), SentencePiece (with its `▁` prefix) on every piece between them."""
    rstrip = {a["content"]: a["rstrip"] for a in added}
    ids, rest = [], text
    pattern = re.compile("|".join(re.escape(a["content"]) for a in added))
    while rest:
        m = pattern.search(rest)
        piece, rest = (rest, "") if m is None else (rest[:m.start()], rest[m.end():])
        if piece:
            ids += sp.encode(piece)
        if m is not None:
            ids.append(next(a["id"] for a in added if a["content"] == m.group()))
            if rstrip[m.group()]:
                rest = rest.lstrip()
    return ids


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t[:20]))
def test_mini_fast_equals_sentencepiece_and_round_trips(mini, sentencepiece_model, text):
    assert mini.encode(text) == sentencepiece_model.encode(text)
    assert mini.decode(mini.encode(text)) == text


def test_mini_chat_text_matches_slow_path_and_chat_template(mini, sentencepiece_model):
    added = json.loads(data_path("tokenizers/phi-3-mini/tokenizer.json").read_text())["added_tokens"]
    hf = mini.to_transformers()  # what stages 06/07 score with: the same backend, the folder's template
    chat = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "def f(x):\n    return  x  # why?"},
            {"role": "assistant", "content": "It returns x. 🙂"},
            {"role": "user", "content": "And in 中文?"}]
    text = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|system|>\nYou are terse.<|end|>\n<|user|>\n") and text.endswith("<|assistant|>\n")
    ids = mini.encode(text)
    assert ids == _slow_encode(sentencepiece_model, text, added)
    assert ids == hf.apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
    assert ids.count(32007) == 4 and ids[-1] == 32001  # an <|end|> per message, then <|assistant|>
    for literal in ("Hello<|end|>world", "<|endoftext|><|endoftext|>x", "a</s> b <s>c", "x <|user|> y"):
        assert mini.encode(literal) == _slow_encode(sentencepiece_model, literal, added), literal


@pytest.mark.parametrize("text", [" Paris", "   indented", "<|user|>\nHi<|end|>\n"])
def test_mini_transformers_tokenizer_gives_our_ids(mini, text):
    # transformers 5's own LlamaTokenizer rebuilds this file for `legacy: false` and gives other
    # ids here (" Paris" loses its space, no "▁" after <|user|>); ours wraps the same backend
    assert mini.to_transformers()(text, add_special_tokens=False)["input_ids"] == mini.encode(text)


def test_mini_document_boundaries(mini):
    docs = ["first document.", "  second\n", "third 🙂"]
    batch = mini.encode_batch(docs, add_eos=True)
    assert batch == [mini.encode(d) + [32000] for d in docs]
    assert [mini.decode(ids[:-1]) for ids in batch] == docs
    assert mini.decode(batch[0]) == "first document.<|endoftext|>"


# ----------------------------------------------------------------------------- phi-3-small
def test_small_sizes_and_special_ids(small):
    specials = phi3_small_special_tokens()
    assert len(small) == PHI3_SMALL_VOCAB == 100_352
    # the specials and dummies fill 100,256-100,351 exactly once, over 100,256 BPE ranks
    assert sorted(specials.values()) == list(range(100_256, PHI3_SMALL_VOCAB))
    assert (small.eos_id, small.bos_id, small.pad_id) == (100257, 100257, 100257)
    assert [small.token_to_id(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")] == [
        100261, 100262, 100263, 100266]
    assert small.encode("hello world") == [15339, 1917]  # cl100k_base's ids


def test_small_bpe_file_is_tiktokens_cl100k():
    src = data_path("tokenizers/phi-3-small/cl100k_base.tiktoken")
    from phi_lib.data.tokenizer import CL100K_SHA256

    assert hashlib.sha256(src.read_bytes()).hexdigest() == CL100K_SHA256


@pytest.fixture(scope="module")
def official_cl100k(tmp_path_factory):
    """tiktoken's own registered cl100k_base, from the data folder's file through tiktoken's
    cache (keyed by the sha1 of its URL; tiktoken checks the sha256): no download."""
    import os

    import tiktoken
    from tiktoken_ext.openai_public import cl100k_base

    cache = tmp_path_factory.mktemp("tiktoken_cache")
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    (cache / hashlib.sha1(url.encode()).hexdigest()).symlink_to(data_path("tokenizers/phi-3-small/cl100k_base.tiktoken"))
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.Encoding(**cl100k_base())
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def test_small_equals_tiktokens_cl100k_base(small, official_cl100k):
    assert CL100K_PATTERN == official_cl100k._pat_str
    for text in TEXTS:
        assert small.encode(text) == official_cl100k.encode(text), text[:30]
    # cl100k's own special tokens keep their ids
    assert small.encode("<|endoftext|><|fim_prefix|><|endofprompt|>") == official_cl100k.encode(
        "<|endoftext|><|fim_prefix|><|endofprompt|>", allowed_special="all")


@pytest.mark.parametrize("text", TEXTS + [
    "<|system|>\nBe brief.<|end|>\n<|user|>\nHi\n<|end|>\n<|assistant|>\n", "a<|endoftext|>b"],
    ids=lambda t: repr(t[:20]))
def test_small_round_trip_exact(small, text):
    assert small.decode(small.encode(text)) == text


def test_small_chat_tokens_and_document_boundaries(small):
    ids = small.encode("<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n")
    assert ids[0] == 100262 and 100266 in ids and ids[-2:] == [100263, 198]  # "\n" kept (no rstrip)
    docs = ["one", "two 🙂", "   three"]
    batch = small.encode_batch(docs, add_eos=True)
    assert batch == [small.encode(d) + [100257] for d in docs]
    assert small.decode([i for ids in batch for i in ids]) == "<|endoftext|>".join(docs) + "<|endoftext|>"
    assert small.decode(batch[1], skip_special_tokens=True) == "two 🙂"


@pytest.mark.slow
def test_small_as_transformers_tokenizer_keeps_ids(small):
    # stages 06/07 score through transformers: the converted tokenizer must give the same ids
    hf = small.to_transformers()
    assert len(hf) == PHI3_SMALL_VOCAB and hf.eos_token_id == 100257
    for text in TEXTS + ["<|user|>\nHi<|end|>\n<|assistant|>\n"]:
        assert hf(text, add_special_tokens=False)["input_ids"] == small.encode(text), text[:30]
        assert hf.decode(small.encode(text)) == text


def test_unknown_tokenizer_names_the_data_folder(tmp_path):
    from phi_lib.paths import MissingDataError

    with pytest.raises(MissingDataError, match="phi-3-big"):
        load_tokenizer("phi-3-big", data_dir=str(tmp_path))
