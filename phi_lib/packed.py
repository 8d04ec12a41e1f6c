"""The packed-mixture format: the files stage 03 writes and stage 05 (or anyone) reads.

A packed mixture is a folder (`03_mix/`, and `03_mix/finetune/` when a finetune set is
configured) holding:

  mix.json                  the mixture's summary; written last, so it marks the folder complete
  <split>/shard-NNNNN.bin   whole windows of `seq_len` tokens, memory-mappable, in the token
                            dtype the vocabulary needs (`token_dtype`: uint16 up to 65,536
                            ids, uint32 beyond, e.g. phi-3-small's 100,352)
  <split>/doc_starts.npy    int64 stream positions where a document starts
  <split>/index.json        seq_len, dtype, vocab_size, eos_id, shards, windows, phase window ranges

for the splits `train` and (unless `mix.val_fraction` is 0) `val`. The writer is
`phi_lib.data.pack` (stage 03). This module is the one definition of the layout and its
reader, top-level so that stage 05 reads stage 03's files without importing stage 03
(DESIGN.md: stages talk through files only).

    ds = PackedDataset("outputs/smoke/03_mix", split="train")
    for batch, next_sample in ds.iter_batches(micro_batch_size=8, rank=r, world_size=w,
                                              start_sample=ckpt.get("sample", 0), seed=seed):
        ...  # save `next_sample` with a checkpoint to resume exactly after this batch

The sample order is an endless stream over epochs: epoch e visits every window once in a
seeded permutation (within each phase of a phase schedule, phases in order). Global
position p of the stream goes to rank (p mod (B*W)) // B, so the ranks of one step read
disjoint windows and together cover every window exactly once per epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np

from phi_lib.io import read_json

if TYPE_CHECKING:
    import torch

def token_dtype(vocab_size: int) -> np.dtype:
    """Token ids on disk: uint16 when every id fits (codegen-350M-mono's 50,295, phi-3-mini's
    32,011), else uint32 (phi-3-small's 100,352). Half the bytes wherever 16 bits suffice."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
    if vocab_size > 1 << 32:
        raise ValueError(f"vocab_size {vocab_size:,} does not fit uint32 token ids")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


MIX_FILE = "mix.json"
INDEX_FILE = "index.json"
DOC_STARTS_FILE = "doc_starts.npy"
SPLITS = ("train", "val")
FINETUNE_DIR = "finetune"
"""Subfolder of `03_mix/` holding the finetune set as a packed mixture of its own."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.bin"


def read_index(folder: Union[str, Path]) -> Optional[dict]:
    """A split folder's `index.json`, or None if the split is not (completely) written."""
    path = Path(folder) / INDEX_FILE
    return read_json(path) if path.is_file() else None


class PackedDataset:
    """Windows of `seq_len` tokens of one split of a packed mixture (`03_mix/`)."""

    def __init__(self, mix_dir: Union[str, Path], split: str = "train"):
        self.mix_dir = Path(mix_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        mix_json = self.mix_dir / MIX_FILE
        if not mix_json.is_file():
            raise FileNotFoundError(f"{mix_json} not found: stage 03 (mix) has not finished in "
                                    f"{self.mix_dir}")
        self.mix = read_json(mix_json)
        index_path = self.mix_dir / split / INDEX_FILE
        if split not in self.mix.get("splits", {}) or not index_path.is_file():
            raise FileNotFoundError(f"{self.mix_dir}: no {split!r} split (val_fraction 0?)")
        self.split = split
        self.index = read_json(index_path)
        self.seq_len = int(self.index["seq_len"])
        self.eos_id = int(self.index["eos_id"])
        self._per_shard = int(self.index["windows_per_shard"])
        self.dtype = np.dtype(self.index["dtype"])
        """Token dtype of the shards (uint16 or uint32, as `index.json` records)."""
        self._shards = [np.memmap(self.mix_dir / split / name, dtype=self.dtype, mode="r").reshape(-1, self.seq_len)
                        for name in self.index["shards"]]
        self._n = int(self.index["n_windows"])
        if sum(len(s) for s in self._shards) != self._n:
            raise ValueError(f"{index_path}: shards hold {sum(len(s) for s in self._shards)} "
                             f"windows, the index says {self._n}")
        self._doc_starts = np.load(self.mix_dir / split / DOC_STARTS_FILE, mmap_mode="r")
        self._phases = [(p["start_window"], p["end_window"]) for p in self.index["phases"]] or [(0, self._n)]
        self._perm_cache: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self._n <= i < self._n:
            raise IndexError(f"window {i} out of range ({self._n} windows)")
        i %= self._n
        return np.array(self._shards[i // self._per_shard][i % self._per_shard])

    @property
    def n_tokens(self) -> int:
        return self._n * self.seq_len

    def doc_starts(self, i: int) -> np.ndarray:
        """Positions within window `i` where a document starts (0 if one starts exactly there)."""
        lo, hi = i * self.seq_len, (i + 1) * self.seq_len
        ds = self._doc_starts
        a, b = np.searchsorted(ds, lo), np.searchsorted(ds, hi)
        return np.asarray(ds[a:b]) - lo

    def document_ids(self, i: int) -> np.ndarray:
        """Per token of window `i`, the index of its document within the window (for masks)."""
        marks = np.zeros(self.seq_len, dtype=np.int64)
        marks[self.doc_starts(i)] = 1
        marks[0] = 1  # the first token belongs to the first (maybe continued) document
        return np.cumsum(marks) - 1

    def order(self, epoch: int, seed: int = 0) -> np.ndarray:
        """Window order of an epoch: a seeded permutation within each phase, phases in order."""
        key = (epoch, seed)
        if self._perm_cache is None or self._perm_cache[0] != key:
            parts = [a + np.random.default_rng([seed, epoch, p]).permutation(b - a)
                     for p, (a, b) in enumerate(self._phases)]
            self._perm_cache = (key, np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return self._perm_cache[1]

    def windows_at(self, positions: np.ndarray, seed: int = 0) -> np.ndarray:
        """Window indices at global stream positions (epoch = position // len)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(len(positions), dtype=np.int64)
        epochs = positions // self._n
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self.order(int(e), seed)[positions[m] % self._n]
        return out

    def batch(self, windows: np.ndarray) -> np.ndarray:
        """Windows gathered into a (B, seq_len) array of the stored dtype."""
        out = np.empty((len(windows), self.seq_len), dtype=self.dtype)
        shard_of = windows // self._per_shard
        for k in np.unique(shard_of):
            m = shard_of == k
            out[m] = self._shards[int(k)][windows[m] % self._per_shard]
        return out

    def iter_batches(self, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                     start_sample: int = 0, seed: int = 0) -> Iterator[tuple["torch.LongTensor", int]]:
        """Endless (batch (B, T) int64, next global sample offset) for this rank."""
        import torch

        if self._n == 0:
            raise ValueError(f"{self.mix_dir}/{self.split}: the split has no windows")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be > 0, got {micro_batch_size}")
        step = micro_batch_size * world_size
        pos = int(start_sample)
        while True:
            mine = np.arange(pos + rank * micro_batch_size, pos + (rank + 1) * micro_batch_size)
            tokens = self.batch(self.windows_at(mine, seed))
            pos += step
            yield torch.from_numpy(tokens.astype(np.int64)), pos

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.mix_dir)!r}, split={self.split!r}: {self._n} windows x "
                f"{self.seq_len} {self.dtype.name} tokens, {len(self._shards)} shards)")
