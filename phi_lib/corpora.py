"""Streaming corpus readers shared by filtering (stage 02) and mixing (stage 03).

`iter_documents(paths)` yields one dict per document, never holding a corpus in memory, so
corpus size is bounded by disk. Formats:

- `.jsonl`, `.json`, `.jsonl.gz`, `.json.gz`: JSON Lines (C4, Dolma, our own shards);
- `.parquet`: read in row batches with pyarrow;
- `.md`: one document per heading section (`#`..`####`): a whole textbook is far longer than
  a training document;
- `.txt`: documents separated by `<|endoftext|>` (TinyStories), else the whole file;
- a folder: its data files above (sorted, recursive); a folder with none of them is a tree of
  source files (a code corpus), one document per file;
- `stdlib`: the running interpreter's standard library, a real code corpus that is always there.

Each yielded dict is the original record plus `id` (the record's own, else `<file>#<n>`),
`text` (the `text_field` value), `source` (the record's own, else the corpus name) and
`corpus` (the name of the path it was read from, with the first sub-folder: `web/c4-en`).
Corrupt input (bad JSON, a record without a string text field, an undecodable source file,
an unreadable file) is counted in `stats.corrupt` with file and line, never skipped silently.
"""
from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from phi_lib.io import ReadStats, read_jsonl
from phi_lib.paths import MissingDataError, data_dir as data_folder, data_path

PathLike = Union[str, Path]

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
DATA_SUFFIXES = JSONL_SUFFIXES + (".parquet", ".md", ".txt")
CODE_SUFFIXES = (".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts",
                 ".go", ".rs", ".rb", ".sh", ".scala", ".kt", ".swift", ".jl", ".lua")
TEXT_FIELD_ALIASES = ("contents", "content")
"""Tried, in order, when the default field `text` is absent (data-prep-kit parquet uses
`contents`); an explicitly named other field is never second-guessed."""
EOT = "<|endoftext|>"
STDLIB = "stdlib"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", "node_modules"}
_HEADING = re.compile(r"^#{1,4} ", re.M)


def iter_documents(path_or_paths: Union[PathLike, Iterable[PathLike]], text_field: str = "text",
                   stats: Optional[ReadStats] = None, data_dir: Optional[str] = None,
                   code: Optional[bool] = None,
                   code_suffixes: tuple[str, ...] = CODE_SUFFIXES) -> Iterator[dict]:
    """Yield the documents of files/folders/`stdlib`, in a deterministic order.

    Relative paths are looked up in the data folder (`data_dir`, else env `PHI_DATA`), then
    relative to the working directory; a path found in neither raises `MissingDataError`
    before anything is read. `code=True` reads folders as source trees (one document per
    file with a `code_suffixes` suffix), `False` as data files; `None` decides per folder
    (data files if it has any) and always reads `stdlib` as code.
    """
    stats = stats if stats is not None else ReadStats()
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    roots = [resolve_corpus(p, data_dir) for p in paths]  # fail fast on a missing one
    for spec, root in zip(paths, roots):
        name = corpus_name(spec)
        as_code = code if code is not None else (True if str(spec) == STDLIB else None)
        for file, kind in corpus_files(root, code_suffixes, as_code):
            rel = file.name if root.is_file() else file.relative_to(root).as_posix()
            sub = rel.split("/")[0] if "/" in rel and kind != "code" else ""
            yield from _read_file(file, kind, rel, f"{name}/{sub}" if sub else name,
                                  text_field, stats)


def resolve_corpus(spec: PathLike, data_dir: Optional[str] = None) -> Path:
    """A corpus spec as an existing path: `stdlib`, absolute, data-folder-relative or cwd-relative."""
    if str(spec) == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    found = data_path(spec, data_dir)
    if found is None and Path(spec).exists():
        found = Path(spec).resolve()
    if found is None:
        root = data_folder(data_dir)
        where = (f"{spec} does not exist" if Path(spec).is_absolute()
                 else f"{root / spec} does not exist" if root is not None
                 else "no data folder is set (env PHI_DATA or run.data_dir) and it is not "
                      "relative to the working directory")
        raise MissingDataError(f"corpus {str(spec)!r} not found: {where}")
    return found


def corpus_name(spec: PathLike) -> str:
    """Short name of a corpus for tables: `c4-en` for `corpora/web/c4-en`."""
    if str(spec) == STDLIB:
        return STDLIB
    name = Path(spec).name
    for suf in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def corpus_files(root: Path, code_suffixes: tuple[str, ...] = CODE_SUFFIXES,
                 code: Optional[bool] = None) -> list[tuple[Path, str]]:
    """(file, kind) pairs of a corpus path, sorted; kind is a data format or `code`."""
    if root.is_file():
        kind = _data_kind(root.name)
        if kind is None or code:
            kind = "code" if root.name.lower().endswith(code_suffixes) else None
        if kind is None:
            raise ValueError(f"{root}: unknown corpus format (expected one of "
                             f"{', '.join(DATA_SUFFIXES)} or a source file)")
        return [(root, kind)]
    files = sorted(_walk(root))
    data = [(f, k) for f in files if (k := _data_kind(f.name)) is not None]
    if code is False or (data and not code):
        return data
    return [(f, "code") for f in files if f.name.lower().endswith(code_suffixes)]


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("."):
                yield Path(dirpath) / fn


def _data_kind(name: str) -> Optional[str]:
    low = name.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    for suf in (".parquet", ".md", ".txt"):
        if low.endswith(suf):
            return suf[1:]
    return None


def _read_file(file: Path, kind: str, rel: str, corpus: str, text_field: str,
               stats: ReadStats) -> Iterator[dict]:
    if kind == "jsonl":
        records = read_jsonl(file, stats)
    elif kind == "parquet":
        records = _read_parquet(file, stats)
    else:
        raw = _read_text(file, stats)
        if raw is None:
            return
        pieces = ([raw] if kind == "code" else
                  [p.strip() for p in (_split_markdown(raw) if kind == "md" else raw.split(EOT))])
        records = _count(({"text": p} for p in pieces if p.strip()), stats)
    for n, rec in enumerate(records):
        text = rec.get(text_field)
        if text is None and text_field == "text":
            text = next((rec[a] for a in TEXT_FIELD_ALIASES if isinstance(rec.get(a), str)), None)
        if not isinstance(text, str):
            keys = ", ".join(map(str, list(rec)[:8]))
            stats.corrupt.append((str(file), n + 1, f"record {n + 1} has no string field "
                                  f"{text_field!r} (keys: {keys})"))
            continue
        doc = dict(rec)
        doc["text"] = text
        doc["id"] = str(rec["id"]) if rec.get("id") is not None else (
            rel if kind == "code" else f"{rel}#{n}")
        if not isinstance(rec.get("source"), str):
            doc["source"] = corpus
        doc["corpus"] = corpus
        yield doc


def _count(records: Iterator[dict], stats: ReadStats) -> Iterator[dict]:
    for rec in records:
        stats.records += 1
        yield rec


def _read_text(file: Path, stats: ReadStats) -> Optional[str]:
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        stats.corrupt.append((str(file), 0, f"not UTF-8: {e.reason} at byte {e.start}"))
    except OSError as e:
        stats.corrupt.append((str(file), 0, f"unreadable: {type(e).__name__}: {e}"))
    return None


def _split_markdown(raw: str) -> list[str]:
    starts = [m.start() for m in _HEADING.finditer(raw)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return [raw[a:b] for a, b in zip(starts, starts[1:] + [len(raw)])]


def _read_parquet(file: Path, stats: ReadStats, batch_rows: int = 1024) -> Iterator[dict]:
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=batch_rows):
            for rec in batch.to_pylist():
                row += 1
                stats.records += 1
                yield rec
    except Exception as e:  # noqa: BLE001 - a damaged file is reported, the rest still read
        stats.corrupt.append((str(file), row + 1, f"unreadable parquet: {type(e).__name__}: {e}"))
