"""The phi tokenizer: codegen-350M-mono (GPT-2 byte-level BPE + 38 whitespace-run tokens).

phi-1, phi-1.5 and phi-2 all use it: 50,295 tokens (the model's embedding is padded to
51,200), `<|endoftext|>` (50256) as bos/eos/unk and no pad token. It loads with the
`tokenizers` library only (no transformers), from the data folder
(`tokenizers/<name>/tokenizer.json`, or `vocab.json` + `merges.txt`), a path, or the hub.

    tok = load_tokenizer()                       # codegen-350M-mono from $PHI_DATA
    ids = tok.encode("def f(x):\\n    return x")
    assert tok.decode(ids) == "def f(x):\\n    return x"   # exact: spaces and tabs survive
"""
from __future__ import annotations

import functools
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
}


class PhiTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer`: plain ids in, plain text out.

    No special tokens are added by `encode` (packing appends EOS between documents itself);
    a literal `<|endoftext|>` inside the text still maps to the EOS id, as in transformers.
    """

    def __init__(self, backend: Tokenizer, name: str = "", source: str = ""):
        self.backend = backend
        """The underlying `tokenizers.Tokenizer` (fast, Rust)."""
        self.name = name
        self.source = source
        """Where the files were loaded from (a folder, a file or a hub name)."""
        eos = backend.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"tokenizer {name!r} ({source}) has no {EOS_TOKEN} token")
        self.eos_id: int = eos
        self.eos_token: str = EOS_TOKEN
        self.bos_id: int = eos  # codegen/phi: <|endoftext|> is bos, eos and unk
        self.pad_id: int = eos  # no pad token: padding reuses EOS (always masked out)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (50295 for codegen; the model embedding is padded beyond)."""
        return len(self)

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if add_eos else ids

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

    def __repr__(self) -> str:
        return f"PhiTokenizer(name={self.name!r}, tokens={len(self)}, eos_id={self.eos_id}, source={self.source!r})"


def load_tokenizer(name: str = DEFAULT_TOKENIZER, data_dir: Optional[str] = None) -> PhiTokenizer:
    """Load a tokenizer by workbook name (cached per process).

    `name` is a folder under `tokenizers/` of the data folder (`codegen-350M-mono`, `gpt2`),
    a path to a folder or a `tokenizer.json`, or a hub name. A name found nowhere raises
    :class:`phi_lib.paths.MissingDataError` naming both the local path and the hub.
    """
    root = _data_dir(data_dir)
    return _load_cached(name, str(root) if root else None, os.environ.get("HF_HUB_OFFLINE", ""))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: Optional[str], _offline: str) -> PhiTokenizer:
    path = Path(name).expanduser()
    if path.exists():
        return PhiTokenizer(_from_path(path), name=name, source=str(path))
    hub = HUB_NAMES.get(name, name if "/" in name else None)
    found: Union[Path, Tokenizer] = resolve(f"tokenizers/{name}", hub=hub, hub_loader=Tokenizer.from_pretrained,
                                            configured=root)
    if isinstance(found, Tokenizer):
        return PhiTokenizer(found, name=name, source=f"hub:{hub}")
    return PhiTokenizer(_from_path(found), name=name, source=str(found))


def _from_path(path: Path) -> Tokenizer:
    """A `tokenizer.json`, or a folder with one, or a folder with GPT-2 `vocab.json` + `merges.txt`."""
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
    raise MissingDataError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt, in this folder")


def _as_int_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]
