"""Where a mixture source's documents come from: a stage output, a local corpus, or any
`datasets` dataset.

`path` naming a stage output (`01_synthesize/textbook`, `02_filter_web/kept`: a two-digit
stage prefix) is relative to the run folder; any other relative path is relative to the
data folder. A missing stage output fails with the source name and the stage to run first.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from phi_lib.io import ReadStats
from phi_lib.paths import data_dir as data_folder
from phi_lib.paths import data_path

_STAGE_OUTPUT = re.compile(r"^(\d\d)_[A-Za-z]")


class SourceError(FileNotFoundError):
    """A mixture source cannot be found; the message names the source and the missing path."""


@dataclass(frozen=True)
class Source:
    """A resolved mixture source."""

    name: str
    text_field: str = "text"
    path: Optional[Path] = None
    """Local file or folder (jsonl/jsonl.gz/json.gz/parquet/md/txt)."""
    hf_dataset: Optional[str] = None
    """`datasets` dataset: a saved dataset dir, a local data dir, or `name[:config[:split]]`."""
    data_dir: Optional[str] = None

    def iter_documents(self, stats: ReadStats) -> Iterator[dict]:
        """The source's records in a fixed order; corrupt records are counted in `stats`."""
        if self.path is not None:
            from phi_lib.corpora import iter_documents

            yield from iter_documents(self.path, text_field=self.text_field, stats=stats,
                                      data_dir=self.data_dir)
        else:
            yield from _iter_hf(self.hf_dataset, self.data_dir, stats)

    def fingerprint(self) -> str:
        """Changes when the source's files change (so stale tokenized caches are rebuilt)."""
        desc: dict = {"text_field": self.text_field}
        if self.path is not None:
            files = [self.path] if self.path.is_file() else sorted(
                p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith("."))
            desc["path"] = str(self.path)
            desc["files"] = [(str(p.relative_to(self.path)) if p != self.path else p.name,
                              p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        else:
            desc["hf_dataset"] = self.hf_dataset
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"datasets:{self.hf_dataset}"


def resolve_source(name: str, path: Optional[str], hf_dataset: Optional[str], *,
                   text_field: str, run_dir: Path, data_dir: Optional[str] = None,
                   key: Optional[str] = None) -> Source:
    """Resolve one `mix.sources.<name>` entry to local files or a `datasets` spec.

    `key` is the config key holding `path`, named in errors (default `mix.sources.<name>.path`).
    """
    key = key or f"mix.sources.{name}.path"
    where_key = key.removesuffix(".path")
    if hf_dataset is not None:
        return Source(name, text_field, hf_dataset=hf_dataset, data_dir=data_dir)
    stage = _STAGE_OUTPUT.match(path)
    if stage:
        full = Path(run_dir) / path
        if not full.exists():
            raise SourceError(
                f"{where_key}: {path!r} is an output of stage {stage.group(1)} but "
                f"{full} does not exist: run stage {stage.group(1)} first "
                f"(`python -m phi_lib run <params> --stages {stage.group(1)}`) or point the "
                f"source at a corpus (--set {key}=corpora/...)")
        return Source(name, text_field, path=full, data_dir=data_dir)
    local = data_path(path, data_dir)
    if local is None:
        root = data_folder(data_dir)
        where = (f"{Path(path) if Path(path).is_absolute() else root / path} does not exist"
                 if root is not None or Path(path).is_absolute()
                 else "no data folder is set (env PHI_DATA or run.data_dir)")
        raise SourceError(f"{where_key}: corpus {path!r} not found: {where}")
    return Source(name, text_field, path=local, data_dir=data_dir)


def _iter_hf(spec: str, data_dir: Optional[str], stats: ReadStats) -> Iterator[dict]:
    """Records of a `datasets` dataset: a `save_to_disk` dir, a local data dir, or a hub name."""
    import datasets

    local = data_path(spec, data_dir) or (Path(spec) if Path(spec).exists() else None)
    if local is not None and ((local / "dataset_info.json").is_file() or
                              (local / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(local))
        split = None
    else:
        name, config, split = (spec.split(":") + [None, None])[:3]
        ds = datasets.load_dataset(str(local) if local is not None else name, config or None,
                                   split=split or None)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None and "train" in ds:
            ds = ds["train"]
        else:
            raise SourceError(f"datasets source {spec!r} has splits {list(ds)}: name one as "
                              f"`{spec}:<config>:<split>`")
    for rec in ds:
        stats.records += 1
        yield rec
