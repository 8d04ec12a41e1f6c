"""The eight stages: their notebooks, output folders, named outputs and what they depend on.

A stage's fingerprint (phi_lib.provenance) covers the result-affecting fields of its own
config sections, the data folder, and for each stage it reads, that stage's fingerprint and
the content digest of its named outputs, so changing `train.max_steps` reruns training and
evaluation but not synthesis, and a retrained checkpoint is re-evaluated. A finished stage
writes ``stage.json`` (:data:`DONE_MARKER`) with its fingerprint, the digest of its outputs
and the data files it read (recorded in its manifest's ``inputs``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi_lib.paths import project_root
from phi_lib.provenance import Fingerprint, digest, path_digest

DONE_MARKER = "stage.json"


@dataclass(frozen=True)
class Stage:
    number: str
    name: str
    sections: tuple[str, ...]
    """Config sections (or dotted keys of another stage's section) the stage's results depend on."""
    upstream: tuple[str, ...]
    """Stages whose outputs it reads."""

    @property
    def dirname(self) -> str:
        return f"{self.number}_{self.name}"

    @property
    def notebook(self) -> Path:
        return project_root() / "notebooks" / f"{self.dirname}.ipynb"

    @property
    def built(self) -> bool:
        """A stage joins runs once its notebook exists."""
        return self.notebook.is_file()

    outputs: tuple[str, ...] = ()
    """Globs (relative to the stage folder) of what downstream stages read: their content
    digest is part of every downstream fingerprint."""

    def fingerprint(self, cfg) -> Fingerprint:
        """Result-affecting config of the stage + the identity of what it reads."""
        from phi_lib.paths import data_dir

        inputs = {"data_dir": str(data_dir(cfg.run.data_dir) or "")}
        for u in self.upstream:
            if u in cfg.run.stages:
                up = STAGES[u]
                inputs[up.dirname] = f"{up.fingerprint(cfg).key}:{up.recorded_outputs(cfg)}"
        return Fingerprint.of(config=cfg.results_view("run", *self.sections), inputs=inputs)

    def config_hash(self, cfg) -> str:
        """The fingerprint's key: what manifests and done markers record."""
        return self.fingerprint(cfg).key

    def dir(self, cfg) -> Path:
        return cfg.run_dir / self.dirname

    def marker(self, cfg) -> Optional[dict]:
        """The done marker of the last finished run, or None."""
        import json

        try:
            return json.loads((self.dir(cfg) / DONE_MARKER).read_text())
        except (OSError, ValueError):
            return None

    def outputs_digest(self, folder: Path) -> str:
        """Content digest of the named outputs under `folder` (hidden working files left out)."""
        files = sorted({f for pat in self.outputs for f in folder.glob(pat)
                        if not any(part.startswith(".") for part in f.relative_to(folder).parts)})
        parts = [(f.relative_to(folder).as_posix(), path_digest(f)) for f in files]
        return digest(parts)

    def recorded_outputs(self, cfg) -> str:
        marker = self.marker(cfg)
        return (marker or {}).get("outputs_digest", "missing")

    def stale_reasons(self, cfg) -> list[str]:
        """Why the stage's finished outputs are not current ([] = current): the changed config
        keys and inputs, or a data file it read that changed since."""
        marker = self.marker(cfg)
        if marker is None:
            return ["not run"]
        reasons = self.fingerprint(cfg).changes(marker.get("fingerprint"))
        for name, rec in (marker.get("data_inputs") or {}).items():
            if path_digest(rec["path"]) != rec["digest"]:
                reasons.append(f"data file {name} ({rec['path']})")
        return reasons

    def is_complete(self, cfg) -> bool:
        return not self.stale_reasons(cfg)


STAGES: dict[str, Stage] = {s.number: s for s in (
    Stage("01", "synthesize", ("synth",), (), ("*/*.jsonl",)),
    Stage("02", "filter_web", ("filter",), (), ("kept/*.jsonl", "kept_code/*.jsonl")),
    Stage("03", "mix", ("mix", "model.tokenizer"), ("01", "02"),  # packs with the model's tokenizer
          ("train/*", "val/*", "finetune/*", "image_text/*", "mix.json")),
    Stage("04", "model", ("model",), (), ("config.json",)),
    Stage("05", "train", ("train",), ("03", "04"),
          ("checkpoints/*/config.json", "checkpoints/*/*.safetensors", "selected.json")),
    Stage("06", "evaluate", ("evaluate",), ("05",), ("results.json",)),
    Stage("07", "toxicity", ("toxicity",), ("05",), ("results.json",)),
    # 08 measures with stage 06's and 07's settings, so their sections are part of its results
    Stage("08", "posttrain", ("posttrain", "evaluate", "toxicity"), ("05",),
          ("sft/model/config.json", "sft/model/*.safetensors", "dpo/model/config.json",
           "dpo/model/*.safetensors", "results.json")),
)}
