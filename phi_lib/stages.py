"""The seven stages: their notebooks, output folders and what their results depend on.

A stage's config hash covers its own config sections plus the hashes of the stages it
reads from, so changing `train.max_steps` reruns training and evaluation but not synthesis.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phi_lib.paths import project_root


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

    def config_hash(self, cfg) -> str:
        import hashlib

        parts = [cfg.section_hash("run", *self.sections)]
        parts += [STAGES[u].config_hash(cfg) for u in self.upstream if u in cfg.run.stages]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def dir(self, cfg) -> Path:
        return cfg.run_dir / self.dirname


STAGES: dict[str, Stage] = {s.number: s for s in (
    Stage("01", "synthesize", ("synth",), ()),
    Stage("02", "filter_web", ("filter",), ()),
    Stage("03", "mix", ("mix", "model.tokenizer"), ("01", "02")),  # packs with the model's tokenizer
    Stage("04", "model", ("model",), ()),
    Stage("05", "train", ("train",), ("03", "04")),
    Stage("06", "evaluate", ("evaluate",), ("05",)),
    Stage("07", "toxicity", ("toxicity",), ("05",)),
)}
