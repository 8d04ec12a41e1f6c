"""Streaming corpus readers shared by filtering (stage 02) and mixing (stage 03).

`iter_documents` walks files and folders and yields one dict per document, streaming, so a
corpus is bounded by disk, not memory:

- ``.jsonl``, ``.jsonl.gz``, ``.json.gz``: one JSON object per line (corrupt lines are
  counted in ``stats``, never silently skipped);
- ``.parquet``: one row per document, read by row group;
- ``.md``: a (synthetic) textbook split into sections on its headings;
- ``.txt``: split on ``<|endoftext|>`` where present, else one document per file;
- source files (``.py`` ...) in a folder: one document per file (a code corpus);
- ``stdlib``: the running interpreter's standard library, a real code corpus that is always there.

Every document has ``id`` (stable: file and position), ``text`` and ``source`` (the file),
plus the record's other fields.
"""
from __future__ import annotations

import re
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from phi_lib.io import ReadStats, read_jsonl
from phi_lib.paths import MissingDataError, data_path

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
CODE_SUFFIXES = (".py",)
TEXT_KEYS = ("text", "contents", "content")
"""Where the text is when `text_field` is absent (data-prep-kit parquet uses `contents`)."""
HEADING = re.compile(r"^#{1,4} ", re.M)


def resolve_corpus(path: Union[str, Path], data_dir: Optional[str] = None) -> Path:
    """A corpus path: absolute, or relative to the data folder (then to the working dir)."""
    if str(path) == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    p = Path(path).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise MissingDataError(f"corpus {str(p)!r} does not exist")
        return p
    found = data_path(p, data_dir)
    if found is not None:
        return found
    if p.exists():
        return p.resolve()
    raise MissingDataError(f"corpus {str(path)!r} is neither in the data folder "
                           f"(env PHI_DATA / run.data_dir) nor a path that exists")


def corpus_files(root: Path) -> list[Path]:
    """The readable files under `root` (sorted, so reading order is deterministic)."""
    if root.is_file():
        return [root]
    is_stdlib = root == Path(sysconfig.get_paths()["stdlib"])
    files = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        if is_stdlib and ("site-packages" in f.parts or "dist-packages" in f.parts
                          or not f.name.endswith(CODE_SUFFIXES)):
            continue  # the stdlib's own Python code, not whatever is installed beside it
        if _kind(f) is not None:
            files.append(f)
    return files


def iter_documents(paths: Union[str, Path, Iterable[Union[str, Path]]], text_field: str = "text",
                   stats: Optional[ReadStats] = None,
                   data_dir: Optional[str] = None) -> Iterator[dict]:
    """Yield the documents of one or several corpus paths (files, folders or `stdlib`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        root = resolve_corpus(path, data_dir)
        base = root.parent if root.is_file() else root
        for f in corpus_files(root):
            rel = f"{Path(str(path)).name if str(path) == 'stdlib' else path}/" \
                  f"{f.relative_to(base)}" if root.is_dir() else str(path)
            yield from _read_file(f, rel, text_field, stats)


def _kind(f: Path) -> Optional[str]:
    name = f.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".md"):
        return "md"
    if name.endswith(".txt"):
        return "txt"
    if name.endswith(CODE_SUFFIXES):
        return "code"
    return None


def _with_text(rec: dict, text_field: str) -> dict:
    if text_field not in rec:
        for key in TEXT_KEYS:
            if isinstance(rec.get(key), str):
                rec = {**rec, text_field: rec[key]}
                break
    if text_field != "text" and text_field in rec:
        rec = {**rec, "text": rec[text_field]}
    return rec


def _read_file(f: Path, rel: str, text_field: str, stats: ReadStats) -> Iterator[dict]:
    kind = _kind(f)
    if kind == "jsonl":
        for i, rec in enumerate(read_jsonl(f, stats)):
            yield {**_with_text(rec, text_field), "id": f"{rel}:{i}", "source": rel}
    elif kind == "parquet":
        yield from _read_parquet(f, rel, text_field, stats)
    else:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            stats.corrupt.append((str(f), 0, f"unreadable: {type(e).__name__}: {e}"))
            return
        for i, part in enumerate(_split(text, kind)):
            stats.records += 1
            yield {"id": f"{rel}:{i}", "text": part, "source": rel}


def _split(text: str, kind: str) -> list[str]:
    if kind == "md":  # a whole textbook is far longer than a training document
        starts = [m.start() for m in HEADING.finditer(text)]
        bounds = ([0] if not starts or starts[0] != 0 else []) + starts + [len(text)]
        parts = [text[a:b].strip() for a, b in zip(bounds, bounds[1:])]
        return [p for p in parts if p]
    if kind == "txt" and "<|endoftext|>" in text:
        return [p.strip() for p in text.split("<|endoftext|>") if p.strip()]
    return [text]


def _read_parquet(f: Path, rel: str, text_field: str, stats: ReadStats) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
        stats.corrupt.append((str(f), 0, f"unreadable parquet: {type(e).__name__}: {e}"))
        return
    row = 0
    for g in range(pf.num_row_groups):
        try:
            rows = pf.read_row_group(g).to_pylist()
        except Exception as e:  # noqa: BLE001
            stats.corrupt.append((str(f), row, f"unreadable row group {g}: {e}"))
            continue
        for rec in rows:
            stats.records += 1
            yield {**_with_text(rec, text_field), "id": f"{rel}:{row}", "source": rel}
            row += 1
