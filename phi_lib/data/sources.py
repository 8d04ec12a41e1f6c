"""Where a mixture source's documents come from: a stage output, a local corpus, or any
`datasets` dataset.

`path` naming a stage output (`01_synthesize/textbook`, `02_filter_web/kept`: a two-digit
stage prefix) is relative to the run folder; any other relative path is relative to the
data folder. A missing stage output fails with the source name and the stage to run first.
A stage output is read as that stage's data files only: its named outputs
(`phi_lib.stages.STAGES[n].outputs`) that are JSON Lines shards, never its manifest, done
marker, step stats or executed notebook.

`Source.fingerprint()` is a content digest of exactly the files read (plus the text field),
so a tokenized cache is rebuilt when any of them changes, whatever their mtimes say.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from phi_lib.io import ReadStats
from phi_lib.paths import data_dir as data_folder
from phi_lib.paths import data_path
from phi_lib.provenance import digest, file_digest

_STAGE_OUTPUT = re.compile(r"^(\d\d)_[A-Za-z]")
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
"""What a stage writes its records as (a plain `.json` there is a manifest or marker)."""


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
    stage_dir: Optional[Path] = None
    """The stage folder when `path` is a stage output (only its data files are read)."""

    def files(self) -> list[Path]:
        """The files the source reads, in reading order ([] for a `datasets` hub name)."""
        if self.path is None:
            local = _local_dataset(self.hf_dataset, self.data_dir)
            return [] if local is None else ([local] if local.is_file() else sorted(
                f for f in local.rglob("*") if f.is_file() and not _hidden(f, local)))
        if self.stage_dir is not None:
            return stage_data_files(self.stage_dir, self.path)
        from phi_lib.corpora import corpus_files

        return [f for f, _ in corpus_files(self.path)]

    def iter_documents(self, stats: ReadStats) -> Iterator[dict]:
        """The source's records in a fixed order; corrupt records are counted in `stats`."""
        if self.path is not None:
            from phi_lib.corpora import iter_documents

            paths = self.files() if self.stage_dir is not None else self.path
            yield from iter_documents(paths, text_field=self.text_field, stats=stats,
                                      data_dir=self.data_dir)
        else:
            yield from _iter_hf(self.hf_dataset, self.data_dir, stats)

    def fingerprint(self) -> str:
        """Content digest of the files read and the text field (names relative to the source),
        or the `datasets` name of a hub dataset (pinned by the hub, not by us)."""
        if self.path is None and not self.files():
            return digest({"text_field": self.text_field, "hf_dataset": self.hf_dataset})
        root = self.path if self.path is not None else _local_dataset(self.hf_dataset, self.data_dir)
        files = [(f.name if f == root else f.relative_to(root).as_posix(), file_digest(f))
                 for f in self.files()]
        return digest({"text_field": self.text_field, "files": files})

    def input_path(self) -> Optional[Path]:
        """What the stage registers as a data input: the corpus or local dataset (a stage
        output is covered by the upstream stage's outputs digest instead)."""
        if self.path is not None:
            return None if self.stage_dir is not None else self.path
        return _local_dataset(self.hf_dataset, self.data_dir)

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
        return Source(name, text_field, path=full, data_dir=data_dir,
                      stage_dir=Path(run_dir) / Path(path).parts[0])
    local = data_path(path, data_dir)
    if local is None:
        root = data_folder(data_dir)
        where = (f"{Path(path) if Path(path).is_absolute() else root / path} does not exist"
                 if root is not None or Path(path).is_absolute()
                 else "no data folder is set (env PHI_DATA or run.data_dir)")
        raise SourceError(f"{where_key}: corpus {path!r} not found: {where}")
    return Source(name, text_field, path=local, data_dir=data_dir)


def stage_data_files(stage_dir: Path, path: Path) -> list[Path]:
    """The data files of a stage under `path` (its folder, a part of it, or a file named
    explicitly): the stage's named outputs that are record shards (any shard of a stage
    without named outputs), hidden working files left out."""
    from phi_lib.stages import STAGES

    if path.is_file():
        return [path]
    spec = STAGES.get(stage_dir.name[:2])
    globs = spec.outputs if spec is not None and spec.dirname == stage_dir.name else ()
    found = {f for pat in globs for f in stage_dir.glob(pat)} if globs else set(stage_dir.rglob("*"))
    return sorted(f for f in found if f.is_file() and f.name.endswith(SHARD_SUFFIXES)
                  and (f == path or path in f.parents) and not _hidden(f, stage_dir))


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def _local_dataset(spec: Optional[str], data_dir: Optional[str]) -> Optional[Path]:
    if spec is None:
        return None
    return data_path(spec, data_dir) or (Path(spec) if Path(spec).exists() else None)


def _iter_hf(spec: str, data_dir: Optional[str], stats: ReadStats) -> Iterator[dict]:
    """Records of a `datasets` dataset: a `save_to_disk` dir, a local data dir, or a hub name."""
    import datasets

    local = _local_dataset(spec, data_dir)
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
