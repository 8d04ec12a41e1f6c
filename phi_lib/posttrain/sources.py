"""Read a named source (a file, a folder or a `datasets` dataset), and mix sources by weight.

`read(source, want)` yields `(record, where)` with `where` = `file:line` (or `dataset:index`),
so a malformed record can be reported with its place. Unreadable lines are counted by
`phi_lib.io.ReadStats` and turned into drops (`corrupt_line`) by the caller.

`mix(pools, weights, n, seed)` draws `round(weight * n)` items from each pool in a seeded
order; a pool smaller than its share is repeated (its `epochs` say how often), never padded
with another source's items.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Iterator, Optional

from phi_lib.config import ChatSourceConfig
from phi_lib.io import ReadStats, read_jsonl


def files(source: ChatSourceConfig, data_dir: Optional[str] = None) -> list[Path]:
    """The data files of a `kind: file` source (a file, or a folder's jsonl/parquet files)."""
    from phi_lib.corpora import corpus_files, resolve_corpus

    root = resolve_corpus(source.path, data_dir)
    return [f for f, kind in corpus_files(root, code=False) if kind in ("jsonl", "parquet")]


def read(source: ChatSourceConfig, stats: ReadStats, data_dir: Optional[str] = None
         ) -> Iterator[tuple[dict, str]]:
    """The records of a source, at most `source.limit`, each with where it was read."""
    it = _hf(source) if source.kind == "hf" else _files(source, stats, data_dir)
    for n, item in enumerate(it):
        if source.limit is not None and n >= source.limit:
            return
        yield item


def _files(source: ChatSourceConfig, stats: ReadStats, data_dir) -> Iterator[tuple[dict, str]]:
    for f in files(source, data_dir):
        if f.name.endswith(".parquet"):
            yield from _parquet(f)
            continue
        line = 0
        for line, rec in enumerate(read_jsonl(f, stats), 1):
            yield rec, f"{f}:{line}"


def _parquet(f: Path) -> Iterator[tuple[dict, str]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            n += 1
            yield rec, f"{f}:{n}"


def _hf(source: ChatSourceConfig) -> Iterator[tuple[dict, str]]:
    """`name`, `name:config` or `name:config:split` (default split `train`)."""
    import datasets

    name, config, split = (source.hf_dataset.split(":") + [None, None])[:3]
    ds = datasets.load_dataset(name, config or None, split=split or "train")
    for i, rec in enumerate(ds):
        yield dict(rec), f"{source.hf_dataset}:{i}"


def mix(pools: dict[str, list], weights: dict[str, float], n: int, seed: int
        ) -> tuple[list, dict[str, dict]]:
    """(items, per-pool stats) drawing `round(weight * n)` items from each pool."""
    out, stats = [], {}
    for name in sorted(pools):
        pool, want = pools[name], round(weights[name] * n)
        stats[name] = {"available": len(pool), "taken": 0, "epochs": 0.0}
        if not pool or not want:
            continue
        rng = random.Random(f"{seed}-{name}")
        order: list = []
        for _ in range(math.ceil(want / len(pool))):  # a fresh shuffle per repetition
            order += rng.sample(pool, len(pool))
        out += order[:want]
        stats[name].update(taken=want, epochs=round(want / len(pool), 3))
    random.Random(seed).shuffle(out)
    return out, stats
