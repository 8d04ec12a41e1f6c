"""Provenance: what produced an artifact, and whether it is still current.

The workbook's one rule: every resumable or reusable artifact (a synthetic record, an
annotation, a score, a packed shard, a checkpoint, an eval task result, ...) carries the
*fingerprint* of what made it:

* the result-affecting config fields: :func:`results_view` of the config sections, which
  leaves out the fields marked :func:`operational` in ``phi_lib/config.py`` (logging
  cadence, ports, concurrency, timeouts, endpoints, inference batch size, device);
* the identity of its inputs: content digests of the files it read (:func:`path_digest`),
  of a checkpoint or model (:func:`model_identity`), of the upstream stage's outputs.

On a mismatch the stale part is recomputed; where that would throw away expensive work the
user may want (a pretraining run), :func:`require_current` stops with :class:`StaleArtifact`,
naming the changed keys and the two ways out.

    fp = Fingerprint.of(config={"train": results_view(cfg.train)}, inputs={"data": d})
    fp.key            # 16 hex digits, what artifacts store
    fp.changes(old)   # ["train.lr", "inputs.data"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

OPERATIONAL = "operational"
"""Field-metadata key: the field does not change results, so no hash covers it."""

PathLike = Union[str, os.PathLike]


def operational(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING):
    """A dataclass field that does not change results (left out of every fingerprint)."""
    return field(default=default, default_factory=default_factory, metadata={OPERATIONAL: True})


def is_operational(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(OPERATIONAL))


def results_view(obj: Any) -> Any:
    """The result-affecting part of a config value: dataclasses become dicts without their
    operational fields (recursively); other values are returned as plain JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: results_view(getattr(obj, f.name))
                for f in dataclasses.fields(obj) if not is_operational(f)}
    if isinstance(obj, Mapping):
        return {str(k): results_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [results_view(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def operational_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every operational field under a config dataclass (for tests and docs)."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name)
        if is_operational(f):
            out.append(prefix + f.name)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += operational_paths(tp, f"{prefix}{f.name}.")
    return out


def digest(obj: Any) -> str:
    """Stable 16-hex-digit digest of JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- content digests
_FILE_MEMO: dict[tuple, str] = {}


def file_digest(path: PathLike) -> str:
    """sha256 of a file's bytes (16 hex digits); memoized per (path, size, mtime, ctime, inode):
    ctime too, as a rewrite that restores size and mtime (`os.utime`) cannot set it back."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _FILE_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_MEMO[key] = h.hexdigest()[:16]
    return _FILE_MEMO[key]


def path_digest(path: PathLike, exclude: Iterable[str] = ()) -> str:
    """Content digest of a file, or of a folder tree (relative names + file digests).

    Hidden entries (``.cache``, ``.partial``, ...) and names in `exclude` (globs matched
    against each entry's name) are left out: they are working state, not content. A missing
    path digests as ``"missing"`` so that its later appearance counts as a change."""
    import fnmatch

    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_file():
        return file_digest(p)
    exclude = tuple(exclude)
    parts = []
    for root, dirs, files in os.walk(p, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _skip(d, exclude, fnmatch))
        for name in sorted(files):
            if not _skip(name, exclude, fnmatch):
                f = Path(root) / name
                parts.append((f.relative_to(p).as_posix(), file_digest(f)))
    return digest(parts)


def _skip(name: str, exclude: tuple, fnmatch) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatch(name, pat) for pat in exclude)


def paths_digest(paths: Iterable[PathLike]) -> str:
    """One digest over several inputs (order-independent, names included)."""
    return digest(sorted((str(p), path_digest(p)) for p in paths))


MODEL_FILES = ("*.safetensors", "*.index.json", "pytorch_model*.bin", "*.gguf", "config.json", "tokenizer*",
               "*.model", "*.tiktoken", "vocab*", "merges.txt", "special_tokens_map.json",
               "generation_config.json", "chat_template*")
"""What identifies a model folder: weights, config, tokenizer and chat template (what a
chat prompt becomes), not optimizer state."""


def model_identity(path: Optional[PathLike], name: str = "") -> str:
    """Identity of a model: the content digest of its weights/config/tokenizer files when it
    is a local file or folder, else its name (a hub id, pinned by the hub's own revision)."""
    if path is None:
        return f"name:{name}"
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        return f"name:{name or p}"
    import fnmatch

    files = sorted(f for f in p.iterdir() if f.is_file()
                   and any(fnmatch.fnmatch(f.name, pat) for pat in MODEL_FILES))
    return digest([(f.name, file_digest(f)) for f in files])


# ----------------------------------------------------------------------------- fingerprints
@dataclass(frozen=True)
class Fingerprint:
    """What produced an artifact: result-affecting config + digests of its inputs."""

    config: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, config: Optional[Mapping] = None, inputs: Optional[Mapping] = None) -> "Fingerprint":
        return cls(config=results_view(dict(config or {})), inputs=dict(inputs or {}))

    @property
    def key(self) -> str:
        return digest({"config": self.config, "inputs": self.inputs})

    def to_dict(self) -> dict:
        return {"key": self.key, "config": self.config, "inputs": self.inputs}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Fingerprint":
        return cls(config=dict(d.get("config") or {}), inputs=dict(d.get("inputs") or {}))

    def changes(self, old: Union["Fingerprint", Mapping, None]) -> list[str]:
        """Dotted keys whose values differ from `old` (`inputs.<name>` for inputs)."""
        if old is None:
            return ["(no fingerprint)"]
        if not isinstance(old, Fingerprint):
            old = Fingerprint.from_dict(old)
        a, b = _flatten(self.config), _flatten(old.config)
        keys = sorted(k for k in set(a) | set(b) if a.get(k, _NONE) != b.get(k, _NONE))
        ins = sorted(f"inputs.{k}" for k in set(self.inputs) | set(old.inputs)
                     if self.inputs.get(k) != old.inputs.get(k))
        return keys + ins


_NONE = object()


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, Mapping) and d:
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(d, sort_keys=True, default=str)}


class StaleArtifact(RuntimeError):
    """An expensive artifact was made with another config; the message names the changed
    keys and the two ways out."""


def stale_message(what: str, where: PathLike, changes: list[str]) -> str:
    shown = ", ".join(changes[:8]) + (f" (+{len(changes) - 8} more)" if len(changes) > 8 else "")
    return (f"{what} in {where} was made with a different config ({shown} changed): "
            f"keep it by giving this config a new `run.name`, or discard it and recompute "
            f"with --force (python -m phi_lib run ... --force)")


def read_fingerprint(path: PathLike) -> Optional[dict]:
    """The fingerprint stored at `path` (a JSON file with a `fingerprint` entry or a bare one)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (ValueError, OSError):
        return None
    return d.get("fingerprint", d) if isinstance(d, dict) else None


def is_current(stored: Optional[Mapping], fp: Fingerprint) -> bool:
    return bool(stored) and stored.get("key") == fp.key


def require_current(stored: Optional[Mapping], fp: Fingerprint, what: str, where: PathLike) -> None:
    """Raise StaleArtifact unless `stored` (a fingerprint dict, or None = nothing there) matches."""
    if stored is not None and not is_current(stored, fp):
        raise StaleArtifact(stale_message(what, where, fp.changes(stored)))
