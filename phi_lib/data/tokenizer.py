"""The tokenizers of the phi models, behind one interface (`PhiTokenizer`).

| name (folder under `tokenizers/`) | models | vocabulary | eos (document boundary) |
|---|---|---|---|
| `codegen-350M-mono` | phi-1, phi-1.5, phi-2 | GPT-2 byte-level BPE + 38 whitespace runs, 50,295 ids (embedding 51,200) | `<|endoftext|>` 50256 |
| `phi-3-mini` | phi-3-mini, Phi-3.5-mini, phi-3-medium | Llama-2 SentencePiece (32,000, byte fallback) + 11 chat tokens, 32,011 ids (embedding 32,064) | `<|endoftext|>` 32000 (bos `<s>` 1) |
| `phi-3-small` | phi-3-small | tiktoken cl100k_base (100,256 ranks) + Phi-3-small's specials and dummies, 100,352 ids | `<|endoftext|>` 100257 |

The first two load with the `tokenizers` library from `tokenizer.json` (the special tokens
from `tokenizer_config.json` beside it); phi-3-small with `tiktoken` from the BPE file
`cl100k_base.tiktoken` (no download), its special tokens as Phi-3-small's
`tokenization_phi3_small.py` defines them. `encode` adds no special tokens (packing appends
EOS between documents itself); a special token written literally in the text (`<|end|>`,
`<|endoftext|>`) maps to its id, as in transformers.

    tok = load_tokenizer()                       # codegen-350M-mono from $PHI_DATA
    ids = tok.encode("def f(x):\\n    return x")
    assert tok.decode(ids) == "def f(x):\\n    return x"   # exact: spaces and tabs survive
    tok.to_transformers()                        # the same tokenizer for transformers / lm-eval
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from phi_lib.paths import MissingDataError, data_dir as _data_dir, resolve

DEFAULT_TOKENIZER = "codegen-350M-mono"
EOS_TOKEN = "<|endoftext|>"

# Short names of the data folder -> where the same files live on the hub.
HUB_NAMES = {
    "codegen-350M-mono": "Salesforce/codegen-350M-mono",
    "gpt2": "openai-community/gpt2",
    "phi-1_5": "microsoft/phi-1_5",
    "phi-2": "microsoft/phi-2",
    "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
}


class PhiTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer`: plain ids in, plain text out.

    bos/eos/pad come from the folder's `tokenizer_config.json` (codegen: `<|endoftext|>` for
    all three; phi-3-mini: `<s>`, `<|endoftext|>`, `<|endoftext|>`); without one, all three
    are `<|endoftext|>`. A tokenizer without a pad token pads with EOS (always masked out).

    The `tokenizer.json` is used as published. For phi-3-mini that is the Llama-2 SentencePiece
    model exactly on plain text (tests/test_tokenizer_phi3.py); after a special token it
    prefixes the next piece with `▁` (as every piece), where transformers 5 rebuilds the file
    for the config's `legacy: false` (no prefix there, and a leading space of the text dropped):
    `to_transformers()` therefore wraps this backend, so every stage gets the same ids.
    """

    def __init__(self, backend, name: str = "", source: str = "", bos_token: Optional[str] = None,
                 eos_token: str = EOS_TOKEN, pad_token: Optional[str] = None):
        self.backend = backend
        """The underlying tokenizer (`tokenizers.Tokenizer`, fast, Rust)."""
        self.name = name
        self.source = source
        """Where the files were loaded from (a folder, a file or a hub name)."""
        self.eos_token: str = eos_token
        self.bos_token: str = bos_token or eos_token
        self.pad_token: str = pad_token or eos_token
        ids = {t: self.token_to_id(t) for t in (self.eos_token, self.bos_token, self.pad_token)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {name!r} ({source}) has no {', '.join(missing)} token")
        self.eos_id: int = ids[self.eos_token]
        self.bos_id: int = ids[self.bos_token]
        self.pad_id: int = ids[self.pad_token]

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (50295 for codegen; the model embedding is padded beyond)."""
        return len(self)

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if add_eos else ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, (start, end) character span of each token in `text`), as `encode` (for
        masks by character span: stage 08's assistant-only labels)."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]:
        """Token ids of many texts at once (parallel in Rust unless TOKENIZERS_PARALLELISM=false)."""
        texts = list(texts)
        # encode_batch_fast skips the char offsets we never use (~2x faster where available)
        fast = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        out = [e.ids for e in fast(texts, add_special_tokens=False)]
        if add_eos:
            for ids in out:
                ids.append(self.eos_id)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(_as_int_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend.decode_batch([_as_int_list(ids) for ids in batch],
                                         skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def id_to_token(self, idx: int) -> Optional[str]:
        return self.backend.id_to_token(idx)

    def to_transformers(self):
        """The same tokenizer as a transformers tokenizer, same ids (for the stages that score
        through transformers / lm-eval)."""
        return _hf_tokenizer(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, tokens={len(self)}, eos_id={self.eos_id}, "
                f"source={self.source!r})")


# ----------------------------------------------------------------------------- phi-3-small
TIKTOKEN_FILE = "cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
"""The hash tiktoken's registry pins for cl100k_base (the data folder's copy has it)."""
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
                  r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
"""cl100k_base's pre-tokenizer regex (`tiktoken_ext.openai_public`; a test checks it equals
tiktoken's own)."""
PHI3_SMALL_VOCAB = 100_352
"""Phi-3-small's padded vocabulary: ids 100,256-100,351 are special or dummy tokens."""


def phi3_small_special_tokens() -> dict[str, int]:
    """Phi-3-small's special tokens over cl100k's 100,256 ranks: cl100k's own (endoftext, fim,
    endofprompt), the chat tokens, and dummies filling every other id up to 100,351."""
    named = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
             "<|fim_suffix|>": 100260, "<|system|>": 100261, "<|user|>": 100262,
             "<|assistant|>": 100263, "<|end|>": 100266, "<|endofprompt|>": 100276}
    dummy_ids = [100264, 100265, 100256, *range(100267, 100276), *range(100277, PHI3_SMALL_VOCAB)]
    return {**named, **{f"<|dummy_id_{k}|>": i for k, i in enumerate(dummy_ids)}}


class TiktokenTokenizer(PhiTokenizer):
    """phi-3-small: a `tiktoken.Encoding` (cl100k_base + Phi-3-small's special tokens)."""

    def __init__(self, bpe_file: Path, name: str = "phi-3-small"):
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
        except ImportError as e:
            raise ImportError(f"the {name} tokenizer ({bpe_file}) needs the tiktoken package: "
                              "pip install -c .ci/constraints.txt tiktoken") from e

        self.bpe_file = Path(bpe_file)
        self.special_tokens = phi3_small_special_tokens()
        ranks = load_tiktoken_bpe(str(self.bpe_file), expected_hash=CL100K_SHA256)
        encoding = tiktoken.Encoding(name="phi3small", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=self.special_tokens)
        self._special_ids = frozenset(self.special_tokens.values())
        super().__init__(encoding, name=name, source=str(self.bpe_file))

    def __len__(self) -> int:
        return self.backend.n_vocab

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = self.backend.encode(text, allowed_special="all")
        return ids + [self.eos_id] if add_eos else ids

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]:
        out = self.backend.encode_batch(list(texts), allowed_special="all")
        if add_eos:
            for ids in out:
                ids.append(self.eos_id)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = _as_int_list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.backend.decode(ids, errors="replace")

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def token_to_id(self, token: str) -> Optional[int]:
        try:
            return self.backend.encode_single_token(token)
        except KeyError:
            return None

    def id_to_token(self, idx: int) -> Optional[str]:
        try:
            return self.backend.decode_single_token_bytes(idx).decode("utf-8", errors="replace")
        except KeyError:
            return None


# ----------------------------------------------------------------------------- loading
def load_tokenizer(name: str = DEFAULT_TOKENIZER, data_dir: Optional[str] = None) -> PhiTokenizer:
    """Load a tokenizer by workbook name (cached per process).

    `name` is a folder under `tokenizers/` of the data folder (`codegen-350M-mono`, `gpt2`,
    `phi-3-mini`, `phi-3-small`), a path to a folder, a `tokenizer.json` or a `.tiktoken`
    file, or a hub name. A name found nowhere raises :class:`phi_lib.paths.MissingDataError`
    naming both the local path and the hub.
    """
    root = _data_dir(data_dir)
    return _load_cached(name, str(root) if root else None, os.environ.get("HF_HUB_OFFLINE", ""))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: Optional[str], _offline: str) -> PhiTokenizer:
    path = Path(name).expanduser()
    if path.exists():
        return _from_path(path, name)
    hub = HUB_NAMES.get(name, name if "/" in name else None)
    found: Union[Path, Tokenizer] = resolve(f"tokenizers/{name}", hub=hub, hub_loader=Tokenizer.from_pretrained,
                                            configured=root)
    if isinstance(found, Tokenizer):
        return PhiTokenizer(found, name=name, source=f"hub:{hub}")
    return _from_path(found, name)


def _from_path(path: Path, name: str) -> PhiTokenizer:
    """A `tokenizer.json`, a `.tiktoken` file, or a folder with one (or GPT-2 `vocab.json` +
    `merges.txt`)."""
    if path.suffix == ".tiktoken" or (path.is_dir() and (path / TIKTOKEN_FILE).is_file()
                                      and not (path / "tokenizer.json").is_file()):
        return TiktokenTokenizer(path if path.is_file() else path / TIKTOKEN_FILE, name=name)
    folder = path.parent if path.is_file() else path
    config = _tokenizer_config(folder)
    specials = {k: v.get("content") if isinstance(v, dict) else v
                for k in ("bos_token", "eos_token", "pad_token") if (v := config.get(k))}
    return PhiTokenizer(_tokenizers_backend(path), name=name, source=str(path), **specials)


def _tokenizers_backend(path: Path) -> Tokenizer:
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        # Plain byte-level BPE (the gpt2 folder). tokenizers reads merges with or without
        # the `#version` header line, so no merge is lost.
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOS_TOKEN])
        return tok
    raise MissingDataError(f"{path}: no tokenizer.json, {TIKTOKEN_FILE}, nor vocab.json + merges.txt, "
                           "in this folder")


def _tokenizer_config(folder: Path) -> dict:
    """A folder's `tokenizer_config.json` ({} without one)."""
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}


# ----------------------------------------------------------------------------- transformers
HF_CONFIG_KEYS = ("unk_token", "model_max_length", "padding_side", "clean_up_tokenization_spaces",
                  "chat_template")
"""What a `tokenizer_config.json` carries over to the transformers tokenizer besides bos/eos/pad."""


def _hf_tokenizer(tok: PhiTokenizer):
    """`tok` as a (new) transformers `PreTrainedTokenizerFast` over the very same backend (the
    tiktoken file converted by transformers' `TikTokenConverter`, ids kept), with its
    folder's settings (max length, padding side, chat template)."""
    from transformers import PreTrainedTokenizerFast

    kwargs = dict(bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token)
    if isinstance(tok, TiktokenTokenizer):
        return PreTrainedTokenizerFast(tokenizer_object=_converted_tiktoken(tok.bpe_file), **kwargs)
    path = Path(tok.source)
    config = _tokenizer_config(path.parent if path.is_file() else path)
    kwargs.update({k: config[k] for k in HF_CONFIG_KEYS if config.get(k) is not None})
    if isinstance(kwargs.get("unk_token"), dict):
        kwargs["unk_token"] = kwargs["unk_token"]["content"]
    return PreTrainedTokenizerFast(tokenizer_object=tok.backend, **kwargs)


@functools.lru_cache(maxsize=2)
def _converted_tiktoken(bpe_file: Path) -> Tokenizer:
    """Phi-3-small's tiktoken BPE as a `tokenizers.Tokenizer` (seconds: converted once)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = phi3_small_special_tokens()
    # the converter appends special tokens after the 100,256 ranks in the order given: by id,
    # and Phi-3-small's fill 100,256-100,351 without a gap, so every id is kept
    ordered = sorted(specials, key=specials.get)
    # Oniguruma (tokenizers) reads `{1,3}+` as "{1,3}, repeated": digits would not be cut in
    # threes. Plain `{1,3}` cuts them as tiktoken's possessive form does.
    pattern = CL100K_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
    return TikTokenConverter(vocab_file=str(bpe_file), pattern=pattern,
                             extra_special_tokens=ordered).converted()


def _as_int_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]


def tokenizer_identity(name: str, data_dir: Optional[str] = None) -> str:
    """Content digest of the tokenizer files `name` loads (the hub name for a hub tokenizer)."""
    from phi_lib.provenance import model_identity

    src = load_tokenizer(name, data_dir=data_dir).source
    return f"name:{src[4:]}" if src.startswith("hub:") else model_identity(src)
