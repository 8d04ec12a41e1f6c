"""Stage 02's files: what each step writes and the next one reads, per path (`web`, `code`).

    candidates/<kind>/       prefilter -> annotate, score, keep   (key, id, text, source, corpus, pos)
    annotations/<kind>/      annotate  -> train    (one per sample, with its `annotator` fingerprint)
    annotations.jsonl        annotate  (every path's current annotations, for people)
    classifier[_code]/       train     -> score    (the head; classifier.json with its fingerprint)
    scored/<kind>/           score     -> keep     (key, score, `classifier` fingerprint)
    kept[_code]/, .json      keep      -> stage 03 (the documents kept, threshold and counts)
    eval/<set>.jsonl, eval.json  evaluate (per eval document: label, words, each scorer's score;
                             the report: AUCs overall and per length quartile, F1, calibration)
    .steps/<step>_<kind>.json   each step's fingerprint, stats and output digest

Records are keyed by `<corpus>/<id>`. A record made by another judge or classifier is stale:
`prune` removes it before a step writes, so a folder never mixes two producers.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from phi_lib.io import ReadStats, ShardedJsonlWriter, read_jsonl_folder

KINDS = ("web", "code")
CANDIDATES, ANNOTATIONS, SCORED = "candidates", "annotations", "scored"
CLASSIFIER_DIR = {"web": "classifier", "code": "classifier_code"}
KEPT_DIR = {"web": "kept", "code": "kept_code"}
PREFIX = {CANDIDATES: "candidates", ANNOTATIONS: "annotations", SCORED: "scored"}
"""Shard file prefix of each keyed folder."""


def folder(out: Path, what: str, kind: str) -> Path:
    """`candidates/<kind>`, `annotations/<kind>` or `scored/<kind>`."""
    return Path(out) / what / kind


def writer(out: Path, what: str, kind: str, shard_size: int) -> ShardedJsonlWriter:
    return ShardedJsonlWriter(folder(out, what, kind), PREFIX[what], shard_size, key_field="key")


def read(out: Path, what: str, kind: str, stats: Optional[ReadStats] = None) -> Iterator[dict]:
    """The records of a keyed folder, streaming (a killed writer's `.partial` is read back
    first, as the writer would)."""
    f = folder(out, what, kind)
    if (f / f".{PREFIX[what]}.partial").exists():
        ShardedJsonlWriter(f, PREFIX[what], key_field="key").close()
    yield from read_jsonl_folder(f, stats)


def read_kept(out: Path, kind: str, stats: Optional[ReadStats] = None) -> Iterator[dict]:
    """The documents the keep step wrote for stage 03."""
    yield from read_jsonl_folder(Path(out) / KEPT_DIR[kind], stats)


def prune(out: Path, what: str, kind: str, keep: Callable[[dict], bool],
          shard_size: int) -> int:
    """Remove the records `keep` rejects (stale: another producer, a document no longer
    there); returns how many. The folder is rewritten whole, so a kill leaves either the
    old or the new one."""
    recs = list(read(out, what, kind))
    kept = [r for r in recs if keep(r)]
    if len(kept) == len(recs):
        return 0
    final = folder(out, what, kind)
    tmp = final.with_name(f".{final.name}.pruned")
    shutil.rmtree(tmp, ignore_errors=True)
    w = ShardedJsonlWriter(tmp, PREFIX[what], shard_size, key_field="key")
    for r in kept:
        w.write(r)
    w.close()
    swap(tmp, final)
    return len(recs) - len(kept)


def swap(tmp: Path, final: Path) -> None:
    """Replace folder `final` by `tmp` (a derived output: swapped in whole)."""
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)


class Digest:
    """A running sha256 over records' fields, in the order they come (16 hex digits): the
    content identity of a step's output, independent of its shard layout."""

    def __init__(self, fields: Iterable[str]):
        self.fields, self.h, self.n = tuple(fields), hashlib.sha256(), 0

    def add(self, rec: dict) -> None:
        for f in self.fields:
            self.h.update(repr(rec.get(f)).encode("utf-8", "surrogatepass"))
            self.h.update(b"\x1f")
        self.h.update(b"\x1e")
        self.n += 1

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:16]


def digest_of(records: Iterable[dict], fields: Iterable[str]) -> str:
    d = Digest(fields)
    for r in records:
        d.add(r)
    return d.hexdigest()
