"""Tokenize a source once into an append-only cache: batched, multi-process, resumable.

Per source, `<03_mix>/.cache/tokenized/<name>/` holds
  tokens.bin   token ids of every document, back to back (no EOS: packing adds it), in the
               dtype the tokenizer's vocabulary needs (uint16, or uint32 past 65,536 ids)
  docs.bin     one (n_tokens int64, text_hash uint64) record per document
  state.json   what is committed: documents, tokens, records consumed, read stats, and the
               cache's fingerprint
Both .bin files only grow; `state.json` (written atomically after each fsync) says how much
of them is valid. A killed run truncates them back to the committed length and skips the
records already consumed, so nothing is tokenized twice or lost. The cache does not depend
on the seed or split: the validation split is drawn later from the text hashes.

The fingerprint (:func:`cache_fingerprint`) is what the tokens are a function of: the content
digest of the source's files, its text field, the tokenizer's identity (the digest of the
tokenizer files loaded), the EOS rule and the token dtype. A cache with another fingerprint is
discarded before anything is appended, so old and new tokens never mix; being keyed by content,
the cache survives `--force` (it lives under `.cache/`).
"""
from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from phi_lib.data.sources import Source
from phi_lib.io import ReadStats, atomic_write_json, read_json
from phi_lib.packed import token_dtype  # the cache holds the ids the packed shards hold
from phi_lib.data.tokenizer import tokenizer_identity  # noqa: F401 - part of a cache key
from phi_lib.provenance import Fingerprint, is_current

CACHE_VERSION = 2
EOS_RULE = "no EOS in the cache; packing appends the tokenizer's EOS after every document"
DOC_DTYPE = np.dtype([("n_tokens", "<i8"), ("hash", "<u8")])
COMMIT_EVERY_S = 10.0


@dataclass
class TokenizedSource:
    """A source's tokenized documents, memory-mapped."""

    name: str
    folder: Path
    tokens: np.ndarray
    """All token ids, documents back to back (uint16, memory-mapped)."""
    lengths: np.ndarray
    """Tokens per document (int64)."""
    hashes: np.ndarray
    """64-bit hash of each document's text (uint64): decides the validation split."""
    state: dict = field(default_factory=dict)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each document in `tokens`."""
        if not hasattr(self, "_offsets"):
            self._offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        return self._offsets

    @property
    def n_docs(self) -> int:
        return len(self.lengths)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]: self.offsets[i] + self.lengths[i]]

    def is_val(self, seed: int, fraction: float) -> np.ndarray:
        """Validation documents: a seeded, content-based draw (identical texts never straddle)."""
        if fraction <= 0:
            return np.zeros(len(self.hashes), dtype=bool)
        u = _mix64(self.hashes ^ np.uint64(_mix64(np.array([seed], dtype=np.uint64))[0]))
        return (u >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction

    @classmethod
    def open(cls, name: str, folder: Path) -> "TokenizedSource":
        state = read_json(folder / "state.json")
        n_docs, n_tokens = state["docs"], state["tokens"]
        docs = np.fromfile(folder / "docs.bin", dtype=DOC_DTYPE, count=n_docs)
        dtype = np.dtype(state.get("dtype", "uint16"))  # the vocabulary's (uint16 or uint32)
        tokens = (np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,))
                  if n_tokens else np.zeros(0, dtype=dtype))
        return cls(name, folder, tokens, docs["n_tokens"].copy(), docs["hash"].copy(), state)


def tokenize_source(source: Source, folder: Path, tokenizer: str, *, data_dir: Optional[str] = None,
                    num_proc: int = 1, batch_docs: int = 512, progress: bool = True,
                    max_records: Optional[int] = None) -> TokenizedSource:
    """Tokenize `source` into `folder` (or reuse/resume what is there); returns it memory-mapped.

    `max_records` stops early (committing what was done) - used to test resumption.
    """
    folder = Path(folder)
    state = _load_state(folder, cache_fingerprint(source, tokenizer, data_dir))
    if state.get("done"):
        return TokenizedSource.open(source.name, folder)
    folder.mkdir(parents=True, exist_ok=True)
    state["dtype"] = vocab_dtype(tokenizer, data_dir).name
    _truncate(folder / "tokens.bin", state["tokens"] * np.dtype(state["dtype"]).itemsize)
    _truncate(folder / "docs.bin", state["docs"] * DOC_DTYPE.itemsize)

    reader = _Reader(source, skip=state["records"], max_records=max_records)
    bar = _bar(progress, f"tokenize {source.name}", initial=state["tokens"])
    last_commit = time.time()
    with open(folder / "tokens.bin", "ab") as ftok, open(folder / "docs.bin", "ab") as fdoc:
        for consumed, (flat, lengths, hashes) in _encode_stream(
                reader, tokenizer, data_dir, num_proc, batch_docs):
            flat.tofile(ftok)
            rec = np.empty(len(lengths), dtype=DOC_DTYPE)
            rec["n_tokens"], rec["hash"] = lengths, hashes
            rec.tofile(fdoc)
            state["docs"] += len(lengths)
            state["tokens"] += int(flat.size)
            state["records"] = consumed
            if bar is not None:
                bar.update(int(flat.size))
            if time.time() - last_commit > COMMIT_EVERY_S:
                _commit(folder, state, ftok, fdoc)
                last_commit = time.time()
        if not reader.stopped_early:
            # this pass read the whole source (skipped records included): its counts are complete
            st = reader.stats
            state.update(done=True, read_records=st.records, empty=reader.empty,
                         corrupt=st.n_corrupt, corrupt_examples=[list(c) for c in st.corrupt[:5]])
        _commit(folder, state, ftok, fdoc)
    if bar is not None:
        bar.close()
    return TokenizedSource.open(source.name, folder)


def cache_fingerprint(source: Source, tokenizer: str, data_dir: Optional[str] = None) -> Fingerprint:
    """What a source's token cache is a function of (see the module docstring)."""
    return Fingerprint.of(
        config={"version": CACHE_VERSION, "text_field": source.text_field, "eos": EOS_RULE,
                "dtype": vocab_dtype(tokenizer, data_dir).name},
        inputs={"source": source.fingerprint(), "tokenizer": tokenizer_identity(tokenizer, data_dir)})


def vocab_dtype(tokenizer: str, data_dir: Optional[str] = None) -> np.dtype:
    """The token dtype of a tokenizer's ids (uint16, or uint32 past 65,536 ids)."""
    from phi_lib.data.tokenizer import load_tokenizer

    return token_dtype(len(load_tokenizer(tokenizer, data_dir=data_dir)))


# ----------------------------------------------------------------------------- reading
class _Reader:
    """(records consumed, text) of each document after the first `skip` records.

    Every record is checked, skipped or not, so the counts of a pass that reaches the end
    describe the whole source; a record without a string text field is counted as corrupt.
    Empty texts are passed on as "" (the encoder drops them) so `consumed` keeps moving.
    """

    def __init__(self, source: Source, skip: int, max_records: Optional[int]):
        self.source, self.skip, self.max_records = source, skip, max_records
        self.stats = ReadStats()
        self.empty = 0
        self.stopped_early = False

    def __iter__(self) -> Iterator[tuple[int, str]]:
        field_name = self.source.text_field
        for i, rec in enumerate(self.source.iter_documents(self.stats), 1):
            if self.max_records is not None and i > self.max_records:
                self.stopped_early = True
                return
            text = rec.get(field_name)
            if not isinstance(text, str):
                self.stats.corrupt.append((self.source.describe(), i, (
                    f"record has no string field {field_name!r} "
                    f"(keys: {', '.join(map(str, list(rec)[:8]))})")))
                continue
            if not text.strip():
                self.empty += 1
                text = ""
            if i > self.skip:
                yield i, text


def _batches(items: Iterable[tuple[int, str]], size: int) -> Iterator[tuple[int, list[str]]]:
    items = iter(items)
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk[-1][0], [t for _, t in chunk if t]


# ----------------------------------------------------------------------------- encoding
def _encode_stream(texts, tokenizer: str, data_dir: Optional[str], num_proc: int,
                   batch_docs: int) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Encoded batches in input order; `num_proc` worker processes with bounded prefetch."""
    batches = _batches(texts, batch_docs)
    if num_proc <= 1:
        _init_worker(tokenizer, data_dir)
        for consumed, batch in batches:
            yield consumed, encode_batch(batch)
        return
    # fork (as `datasets` does) starts fast and needs no `__main__` guard in user scripts;
    # tokenizers turns its own thread pool off in forked children, and workers are
    # single-threaded anyway. Elsewhere, spawn.
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, data_dir)) as pool:
        pending: deque = deque()
        for consumed, batch in batches:
            pending.append((consumed, pool.apply_async(encode_batch, (batch,))))
            if len(pending) >= 2 * num_proc:  # backpressure: never read far ahead of the workers
                c, res = pending.popleft()
                yield c, res.get()
        while pending:
            c, res = pending.popleft()
            yield c, res.get()


_TOKENIZER = None
_DTYPE = None


def _init_worker(tokenizer: str, data_dir: Optional[str]) -> None:
    global _TOKENIZER, _DTYPE
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from phi_lib.data.tokenizer import load_tokenizer

    _TOKENIZER = load_tokenizer(tokenizer, data_dir=data_dir)
    _DTYPE = token_dtype(len(_TOKENIZER))


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids (flat uint16), lengths and text hashes of a batch, in the worker."""
    ids = _TOKENIZER.encode_batch(texts) if texts else []
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_DTYPE, count=int(lengths.sum()))
    hashes = np.fromiter((text_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
    return flat, lengths, hashes


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(),
                          "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: turns (hash xor seed) into uniform 64-bit values."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


# ----------------------------------------------------------------------------- state
def _load_state(folder: Path, fingerprint: Fingerprint) -> dict:
    path = folder / "state.json"
    if path.is_file():
        state = read_json(path)
        if is_current(state.get("fingerprint"), fingerprint):
            return state
    if folder.exists():  # the source, tokenizer or format changed (or nothing was committed)
        shutil.rmtree(folder)
    return {"fingerprint": fingerprint.to_dict(), "docs": 0, "tokens": 0, "records": 0, "done": False}


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size != size:
        with open(path, "r+b") as f:
            f.truncate(size)


def _commit(folder: Path, state: dict, *files) -> None:
    for f in files:
        f.flush()
        os.fsync(f.fileno())
    atomic_write_json(folder / "state.json", state)


def _bar(progress: bool, desc: str, initial: int = 0):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="tok", unit_scale=True, initial=initial)
