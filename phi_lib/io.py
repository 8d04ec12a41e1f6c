"""File plumbing every stage shares: atomic writes, JSONL reading with corrupt-line
accounting, resumable sharded JSONL output, and the stage manifest.

Stages talk only through files under ``outputs/<run>/``; these helpers make those files
safe to interrupt (a write is either complete or absent) and honest about bad input (a
corrupt record is counted and reported, never silently skipped).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs):
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, path: PathLike, dpi: int = 100) -> Path:
    """Lay out and write a matplotlib figure atomically (format from the suffix): a plot a
    stage's manifest names is never half-written."""
    path = Path(path)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- JSONL reading
@dataclass
class ReadStats:
    """What a reader saw: records read and corrupt lines (file, line number, error)."""

    records: int = 0
    corrupt: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def n_corrupt(self) -> int:
        return len(self.corrupt)

    def summary(self) -> str:
        s = f"{self.records} records"
        if self.corrupt:
            f, line, err = self.corrupt[0]
            s += f", {self.n_corrupt} corrupt (first: {f}:{line}: {err})"
        return s


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_jsonl(path: PathLike, stats: Optional[ReadStats] = None) -> Iterator[dict]:
    """Yield the JSON objects of a .jsonl / .jsonl.gz / .json.gz file, streaming.

    A line that is not a JSON object is recorded in `stats.corrupt` (file, line, error)
    instead of stopping the read; a truncated gzip stream is recorded the same way.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    stats.corrupt.append((str(path), lineno, f"invalid JSON: {e.msg}"))
                    continue
                if not isinstance(rec, dict):
                    stats.corrupt.append((str(path), lineno, f"not an object: {type(rec).__name__}"))
                    continue
                stats.records += 1
                yield rec
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        stats.corrupt.append((str(path), lineno + 1, f"unreadable: {type(e).__name__}: {e}"))


def iter_jsonl_files(folder: PathLike) -> list[Path]:
    """The JSONL files of a folder (sorted, so reading order is deterministic)."""
    folder = Path(folder)
    pats = ("*.jsonl", "*.jsonl.gz", "*.json.gz")
    return sorted(p for pat in pats for p in folder.rglob(pat) if not p.name.startswith("."))


def read_jsonl_folder(folder: PathLike, stats: Optional[ReadStats] = None) -> Iterator[dict]:
    """The records of every JSONL file under `folder` (see `iter_jsonl_files`), streaming;
    nothing if the folder does not exist yet. Corrupt lines go to `stats`."""
    folder = Path(folder)
    for f in iter_jsonl_files(folder) if folder.is_dir() else []:
        yield from read_jsonl(f, stats)


def read_keyed(folder: PathLike, key_field: str, keys: Optional[Iterable[str]] = None,
               stats: Optional[ReadStats] = None) -> list[dict]:
    """The records of a `ShardedJsonlWriter` folder, one per key (the last written wins):
    all of them, or only `keys`, in that order (keys not on disk are left out)."""
    recs = {str(r.get(key_field)): r for r in read_jsonl_folder(folder, stats)}
    return list(recs.values()) if keys is None else [recs[k] for k in keys if k in recs]


def replace_dir(new: PathLike, dest: PathLike) -> None:
    """Put the finished folder `new` in the place of `dest` (a whole rewrite of an output).

    Two renames: `dest` to `.<name>.old`, `new` to `dest`, then the old copy is removed. A
    kill between them leaves no `dest` and dot-named leftovers (readers skip dot names); the
    step that writes `dest` starts over from its inputs and removes them."""
    import shutil

    new, dest = Path(new), Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def append_jsonl(path: PathLike, record: dict) -> None:
    """Append one record to a JSONL file durably: one write of a whole line, then fsync.

    For logs written one event at a time (a human's grades). A crash mid-write can leave a
    torn last line; the next append starts on a fresh line, so only that line is lost, and
    `read_jsonl` counts it as corrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- sharded output
class ShardedJsonlWriter:
    """Append records to `folder/<prefix>-NNNNN.jsonl` shards; resumable without duplicates.

    Each record carries a unique key (`key_field`). On open, the keys already on disk are
    loaded, so a rerun after an interruption skips them (`writer.has(key)`). A shard is
    written through a `.partial` file and renamed when full or on `close()`; a `.partial`
    left by a killed run is read back (complete lines only), so nothing written is lost.
    `prune(keep)` removes the records that are no longer current (provenance), rewriting each
    shard atomically.
    """

    def __init__(self, folder: PathLike, prefix: str = "shard", shard_size: int = 1000,
                 key_field: str = "id"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.shard_size, self.key_field = prefix, shard_size, key_field
        self.keys: set[str] = set()
        self._recover_partial()
        for shard in self.shards():
            for rec in read_jsonl(shard):
                self.keys.add(str(rec.get(key_field)))
        self._index = self._next_index()
        self._buffer: list[dict] = []

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9].jsonl"))

    def _next_index(self) -> int:
        """One past the highest shard number (a pruned, deleted shard leaves a gap)."""
        shards = self.shards()
        return int(shards[-1].stem.rsplit("-", 1)[1]) + 1 if shards else 0

    def prune(self, keep, stats: Optional[ReadStats] = None) -> int:
        """Remove every record on disk for which `keep(record)` is false; returns how many.

        Each shard holding one is rewritten atomically (deleted when nothing is left), so a
        kill midway leaves every shard whole, old or pruned, and pruning again finishes the
        job. Call it before writing (the buffer must be empty)."""
        if self._buffer:
            raise RuntimeError(f"{self.folder}: prune() with unsealed records in the buffer")
        removed = 0
        for shard in self.shards():
            recs = list(read_jsonl(shard, stats))
            flags = [bool(keep(r)) for r in recs]
            if all(flags):
                continue
            removed += flags.count(False)
            self.keys -= {str(r.get(self.key_field)) for r, ok in zip(recs, flags) if not ok}
            kept = [r for r, ok in zip(recs, flags) if ok]
            if kept:
                with atomic_open(shard, "w", encoding="utf-8") as f:
                    for rec in kept:
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            else:
                shard.unlink()
        return removed

    def has(self, key: str) -> bool:
        return str(key) in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def write(self, record: dict) -> bool:
        """Buffer a record; returns False (and writes nothing) if its key is already present."""
        key = str(record[self.key_field])
        if key in self.keys:
            return False
        self.keys.add(key)
        self._buffer.append(record)
        self._append_partial(record)
        if len(self._buffer) >= self.shard_size:
            self._seal()
        return True

    def close(self) -> None:
        if self._buffer:
            self._seal()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # A killed run leaves its current shard as .partial: append-only lines, each flushed.
    def _partial(self) -> Path:
        return self.folder / f".{self.prefix}.partial"

    def _append_partial(self, record: dict) -> None:
        with open(self._partial(), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()

    def _seal(self) -> None:
        dest = self.folder / f"{self.prefix}-{self._index:05d}.jsonl"
        with atomic_open(dest, "w", encoding="utf-8") as f:
            for rec in self._buffer:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._partial().unlink(missing_ok=True)
        self._index += 1
        self._buffer = []

    def _recover_partial(self) -> None:
        part = self._partial()
        if not part.exists():
            return
        recs = list(read_jsonl(part))  # a torn last line is counted corrupt and dropped
        part.unlink()
        if recs:
            idx = self._next_index()
            with atomic_open(self.folder / f"{self.prefix}-{idx:05d}.jsonl", "w",
                             encoding="utf-8") as f:
                for rec in recs:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def prune_keyed(folder: PathLike, prefix: str, keep: Callable[[dict], bool]) -> int:
    """Remove the records of a `ShardedJsonlWriter` folder that `keep` rejects (stale ones),
    rewriting each affected shard atomically; a `.partial` left by a killed writer is sealed
    first. An emptied shard stays as an empty file, so the writer's numbering holds. Returns
    how many records were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for shard in ShardedJsonlWriter(folder, prefix).shards():  # opening seals a .partial
        recs = list(read_jsonl(shard))
        kept = [r for r in recs if keep(r)]
        if len(kept) < len(recs):
            with atomic_open(shard, "w", encoding="utf-8") as f:
                for rec in kept:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            removed += len(recs) - len(kept)
    return removed


# ----------------------------------------------------------------------------- manifest
def versions() -> dict[str, str]:
    """Versions of the packages that shape results."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "datasets", "deepspeed", "lm_eval", "trl",
                "peft", "phi-workbook"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_manifest(stage_dir: PathLike, cfg, stage: str, *, metrics: Optional[dict] = None,
                   counts: Optional[dict] = None, figures: Iterable[str] = (),
                   timings: Optional[dict] = None, inputs: Optional[dict] = None,
                   drops: Optional[dict] = None, **extra: Any) -> dict:
    """Write `<stage_dir>/manifest.json`: the stage contract read by the report and sweeps.

    `metrics` is a flat dict of numbers (what sweeps compare), `counts` what was kept, `drops`
    what was dropped by reason, `figures` paths (relative to `stage_dir`) of plots for the
    report, `inputs` the data files the stage read (`{name: path}`): their content digests are
    recorded, and the runner reruns the stage when one changes. The `fingerprint` is what
    produced the numbers (phi_lib.provenance).
    """
    from phi_lib.config import section_value
    from phi_lib.provenance import path_digest
    from phi_lib.stages import STAGES

    st = STAGES[stage]
    metrics = dict(metrics or {})
    # NaN/inf (e.g. ROC AUC of a one-class split) is not JSON: null, and named as undefined
    undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    metrics.update({k: None for k in undefined})
    if undefined:
        extra.setdefault("undefined_metrics", undefined)
    fp = st.fingerprint(cfg)
    manifest = {
        "stage": st.dirname,
        "config_hash": fp.key,
        "config": {s: section_value(cfg.to_dict(), s) for s in st.sections},
        "fingerprint": fp.to_dict(),
        "inputs": {name: {"path": str(p), "digest": path_digest(p)}
                   for name, p in (inputs or {}).items()},
        "metrics": metrics,
        "counts": counts or {},
        "drops": drops or {},
        "figures": list(figures),
        "timings": timings or {},
        "versions": versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write_json(Path(stage_dir) / "manifest.json", manifest)
    return manifest
