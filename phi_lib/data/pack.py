"""Pack tokenized documents into fixed-length windows: the training and validation streams.

Document order: each source is walked epoch by epoch (a fresh seeded permutation of its
training documents per epoch) until it has given its share of a phase; the documents of a
phase are then shuffled together, and phases follow each other. Every document is followed
by EOS, the stream is cut into windows of exactly `seq_len` tokens (a document may continue
into the next window; the incomplete tail is dropped) and written as uint16 shards in the
layout of `phi_lib.packed` (shards, `doc_starts.npy`, then `index.json` last).

Validation holds the held-out documents of every source once (split by document, never by
window). Shards are written atomically and recorded in `<split>/progress.json` with the
layout's key (document order, token caches, window and shard sizes), so an interrupted run
rewrites only the missing shards and a changed layout rewrites them all (the old ones are
removed first). `index.json` records the stage's provenance fingerprint and a
`content_digest` of what a reader sees (windows in order, document starts, phases), which
does not depend on how the windows are split into shard files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from phi_lib.data.mixture import MixturePlan
from phi_lib.data.tokenize import TokenizedSource
from phi_lib.io import atomic_open, atomic_write_json, read_json
from phi_lib.packed import DOC_STARTS_FILE, INDEX_FILE, shard_name, token_dtype

GATHER_TOKENS = 1 << 22  # tokens gathered per step while writing a shard (bounds memory)


@dataclass
class DocOrder:
    """A stream of documents: which source, which document, and phase boundaries."""

    source: np.ndarray
    """Source index (into `names`) of each document in stream order."""
    doc: np.ndarray
    """Document index within its source."""
    names: list[str]
    phase_ends: list[int] = field(default_factory=list)
    """Number of documents in the stream at the end of each phase."""
    phase_names: list[str] = field(default_factory=list)

    def lengths(self, tokenized: dict[str, TokenizedSource]) -> np.ndarray:
        """Tokens per document in the stream, EOS included."""
        out = np.empty(len(self.doc), dtype=np.int64)
        for s, name in enumerate(self.names):
            m = self.source == s
            out[m] = tokenized[name].lengths[self.doc[m]] + 1
        return out


def train_order(plan: MixturePlan, tokenized: dict[str, TokenizedSource], train_mask: dict[str, np.ndarray],
                seed: int) -> DocOrder:
    """Documents of the training stream: each phase's token targets, epochs of each source."""
    names = list(plan.sources)
    cursors = {n: _EpochCursor(np.flatnonzero(train_mask[n]), tokenized[n].lengths + 1,
                               seed, i) for i, n in enumerate(names)}
    src_parts, doc_parts, ends = [], [], []
    for p, phase in enumerate(plan.phases):
        ph_src, ph_doc = [], []
        for i, n in enumerate(names):
            docs = cursors[n].take(phase.targets.get(n, 0))
            ph_doc.append(docs)
            ph_src.append(np.full(len(docs), i, dtype=np.int32))
        ph_src, ph_doc = np.concatenate(ph_src), np.concatenate(ph_doc)
        perm = np.random.default_rng([seed, 7919, p]).permutation(len(ph_doc))
        src_parts.append(ph_src[perm])
        doc_parts.append(ph_doc[perm])
        ends.append(sum(len(d) for d in doc_parts))
    return DocOrder(np.concatenate(src_parts), np.concatenate(doc_parts), names, ends,
                    [ph.name for ph in plan.phases])


def val_order(names: list[str], val_mask: dict[str, np.ndarray], seed: int) -> DocOrder:
    """Every held-out document once, shuffled."""
    src = np.concatenate([np.full(int(val_mask[n].sum()), i, dtype=np.int32) for i, n in enumerate(names)])
    doc = np.concatenate([np.flatnonzero(val_mask[n]) for n in names])
    perm = np.random.default_rng([seed, 104729]).permutation(len(doc))
    return DocOrder(src[perm], doc[perm], names, [len(doc)], ["val"])


class _EpochCursor:
    """Walks a source's documents epoch after epoch, a new seeded permutation per epoch."""

    def __init__(self, doc_ids: np.ndarray, doc_tokens: np.ndarray, seed: int, source_index: int):
        self.doc_ids, self.doc_tokens = doc_ids, doc_tokens
        self.seed, self.source_index = seed, source_index
        self.epoch, self.pos = 0, 0
        self.perm = self._perm()

    def _perm(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 15485863, self.source_index, self.epoch])
        return self.doc_ids[rng.permutation(len(self.doc_ids))]

    def take(self, tokens: int) -> np.ndarray:
        """The next documents whose tokens (EOS included) add up nearest to `tokens`."""
        out, need = [], tokens
        if need > 0 and len(self.doc_ids) == 0:
            raise ValueError("a source with no training documents cannot give tokens")
        while need > 0:
            if self.pos == len(self.perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self.perm = self._perm()
            rest = self.perm[self.pos:]
            cum = np.cumsum(self.doc_tokens[rest])
            if cum[-1] < need:  # the rest of this epoch is not enough: take it all
                out.append(rest)
                need -= int(cum[-1])
                self.pos = len(self.perm)
                continue
            k = int(np.searchsorted(cum, need))  # cum[k] >= need > cum[k - 1]
            under = need - (int(cum[k - 1]) if k else 0)
            take = k + 1 if int(cum[k]) - need <= under else k  # the prefix ending nearest `need`
            out.append(rest[:take])
            self.pos += take
            need = 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- writing
@dataclass
class SplitInfo:
    split: str
    n_windows: int
    n_tokens: int
    n_docs: int
    dropped_tail_tokens: int
    shards: list[str]
    phases: list[dict]
    tokens_by_source: dict[str, int]
    """Tokens of each source in the written windows (EOS included): the realized mixture."""
    content_digest: str = ""
    """Digest of the windows in order, document starts and phases (not of the shard split)."""


def write_split(folder: Path, order: DocOrder, tokenized: dict[str, TokenizedSource], *,
                seq_len: int, shard_tokens: int, eos_id: int, vocab_size: int,
                max_tokens: Optional[int] = None, progress: bool = True,
                fingerprint: Optional[dict] = None) -> SplitInfo:
    """Pack `order` into `folder` (resuming a previous partial write of the same order).

    `max_tokens` caps the stream (the token budget): whole documents overshoot it slightly.
    `fingerprint` (what produced the split: phi_lib.provenance) is recorded in `index.json`.
    """
    dtype = token_dtype(vocab_size)  # uint16, or uint32 past 65,536 ids (recorded in index.json)
    if eos_id >= vocab_size:
        raise ValueError(f"eos_id {eos_id} is not below vocab_size {vocab_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = order.lengths(tokenized)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    stream = int(starts[-1])
    n_windows = min(stream, max_tokens if max_tokens is not None else stream) // seq_len
    n_tokens = n_windows * seq_len
    per_shard = max(1, shard_tokens // seq_len)
    n_shards = -(-n_windows // per_shard)
    layout = _fingerprint(order, tokenized, seq_len, per_shard, eos_id, n_windows)

    progress_path = folder / "progress.json"
    done = set()
    (folder / INDEX_FILE).unlink(missing_ok=True)  # rewritten last: marks the split complete
    if progress_path.is_file() and read_json(progress_path).get("layout") == layout:
        done = set(read_json(progress_path)["done"])
    else:
        progress_path.unlink(missing_ok=True)
        for stale in folder.glob("shard-*.bin"):
            stale.unlink()
    content = hashlib.sha256()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tokens, desc=f"pack {folder.name}", unit="tok", unit_scale=True)
    shards = []
    for k in range(n_shards):
        w0, w1 = k * per_shard, min(n_windows, (k + 1) * per_shard)
        path = folder / shard_name(k)
        shards.append(path.name)
        expected = (w1 - w0) * seq_len * dtype.itemsize
        if path.name in done and path.is_file() and path.stat().st_size == expected:
            with open(path, "rb") as f:  # a shard of this layout written before: reused
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    content.update(chunk)
            if bar is not None:
                bar.update((w1 - w0) * seq_len)
            continue
        with atomic_open(path, "wb") as f:
            for a in range(w0 * seq_len, w1 * seq_len, GATHER_TOKENS):
                b = min(w1 * seq_len, a + GATHER_TOKENS)
                chunk = gather(order, tokenized, starts, a, b, eos_id, dtype)
                chunk.tofile(f)
                content.update(chunk.tobytes())
                if bar is not None:
                    bar.update(b - a)
        done.add(path.name)
        atomic_write_json(progress_path, {"layout": layout, "done": sorted(done)})
    if bar is not None:
        bar.close()

    doc_starts = starts[:-1][starts[:-1] < n_tokens]
    with atomic_open(folder / DOC_STARTS_FILE, "wb") as f:
        np.save(f, doc_starts)
    phases, prev = [], 0
    for name, end_doc in zip(order.phase_names, order.phase_ends):
        end_w = min(n_windows, int(starts[end_doc]) // seq_len)
        phases.append({"name": name, "start_window": prev, "end_window": end_w})
        prev = end_w
    if phases:
        phases[-1]["end_window"] = n_windows
    inside = np.minimum(starts[1:], n_tokens) - np.minimum(starts[:-1], n_tokens)
    by_source = np.bincount(order.source, weights=inside, minlength=len(order.names))
    tokens_by_source = {n: int(by_source[i]) for i, n in enumerate(order.names)}
    content.update(np.ascontiguousarray(doc_starts, dtype=np.int64).tobytes())
    content.update(json.dumps([seq_len, dtype.name, eos_id, phases]).encode())
    info = SplitInfo(folder.name, n_windows, n_tokens, len(doc_starts), stream - n_tokens, shards,
                     phases, tokens_by_source, content.hexdigest()[:16])
    atomic_write_json(folder / INDEX_FILE, {
        "split": info.split, "seq_len": seq_len, "dtype": dtype.name, "vocab_size": vocab_size, "eos_id": eos_id,
        "n_windows": n_windows, "n_tokens": n_tokens, "n_docs": info.n_docs,
        "windows_per_shard": per_shard, "shards": shards, "phases": phases,
        "dropped_tail_tokens": info.dropped_tail_tokens, "tokens_by_source": tokens_by_source,
        "content_digest": info.content_digest, "layout": layout, "fingerprint": fingerprint})
    return info


def gather(order: DocOrder, tokenized: dict[str, TokenizedSource], starts: np.ndarray,
           a: int, b: int, eos_id: int, dtype: np.dtype) -> np.ndarray:
    """Stream tokens [a, b): the documents covering the range, each followed by EOS.

    Vectorized per source: one fancy-index read of the source's memory-mapped tokens.
    """
    i0 = int(np.searchsorted(starts, a, side="right")) - 1
    i1 = int(np.searchsorted(starts, b, side="left"))  # documents starting before b
    base = int(starts[i0])
    out = np.empty(int(starts[i1]) - base, dtype=dtype)
    src, doc = order.source[i0:i1], order.doc[i0:i1]
    out_start = starts[i0:i1] - base
    for s, name in enumerate(order.names):
        m = src == s
        if not m.any():
            continue
        ts = tokenized[name]
        d = doc[m]
        n = ts.lengths[d]  # tokens without EOS
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        out[np.repeat(out_start[m], n) + within] = ts.tokens[np.repeat(ts.offsets[d], n) + within]
        out[out_start[m] + n] = eos_id
    return out[a - base: b - base]


def _fingerprint(order: DocOrder, tokenized: dict[str, TokenizedSource], seq_len: int,
                 per_shard: int, eos_id: int, n_windows: int) -> str:
    """Changes with the document order, the tokenized data and the layout."""
    caches = [[tokenized[n].state.get("fingerprint"), tokenized[n].state.get("tokens")]
              for n in order.names]
    h = hashlib.sha256()
    h.update(json.dumps([order.names, order.phase_ends, seq_len, per_shard, eos_id, n_windows, caches],
                        default=str).encode())
    h.update(np.ascontiguousarray(order.source).tobytes())
    h.update(np.ascontiguousarray(order.doc).tobytes())
    return h.hexdigest()[:16]

