"""Mixture accounting: how many tokens each source contributes and how often it repeats.

The phi papers state mixtures as shares of a token budget (phi-1.5: 150B tokens, 80% new
synthetic + 20% phi-1 data, "~5 epochs of ~30B"). Given each source's size in tokens, this
module turns weights (or a phase schedule, phi-3) into per-source token targets and epochs,
and warns when a source would be repeated more than a set number of epochs. Pure arithmetic
on counts: no data is read here, so the paper's own mixtures can be checked too.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from phi_lib.io import save_figure


class MixtureWarning(UserWarning):
    """A source is repeated more epochs than `mix.max_epochs_warning`."""


class MixtureError(ValueError):
    """A mixture cannot be built (unknown source, weights not summing to 1, empty source)."""


@dataclass
class Phase:
    """A token range of the schedule and the source weights inside it."""

    name: str
    start_tokens: int
    end_tokens: int
    weights: dict[str, float]
    targets: dict[str, int] = field(default_factory=dict)
    """Tokens (documents + their EOS) each source contributes to this phase."""

    @property
    def tokens(self) -> int:
        return self.end_tokens - self.start_tokens


@dataclass
class SourceUsage:
    """One source over the whole schedule."""

    name: str
    available_tokens: int
    """Tokens of one pass over the source's training documents (EOS included)."""
    available_docs: int
    target_tokens: int
    """Tokens the schedule draws from it (all phases)."""

    @property
    def epochs(self) -> float:
        return self.target_tokens / self.available_tokens if self.available_tokens else 0.0


@dataclass
class MixturePlan:
    """Per-source token targets and epochs for a budget, one or several phases."""

    total_tokens: int
    phases: list[Phase]
    sources: dict[str, SourceUsage]
    max_epochs_warning: float
    warnings: list[str] = field(default_factory=list)

    @property
    def unique_tokens(self) -> int:
        """Tokens of the sources used at all, one epoch each."""
        return sum(s.available_tokens for s in self.sources.values() if s.target_tokens)

    @property
    def epochs(self) -> float:
        """Budget over unique tokens: the "~5 epochs of ~30B" figure of phi-1.5."""
        return self.total_tokens / self.unique_tokens if self.unique_tokens else 0.0

    def table(self):
        """One row per source: weight, tokens available and drawn, epochs (a DataFrame)."""
        import pandas as pd

        rows = [{"source": s.name, "share": s.target_tokens / self.total_tokens,
                 "docs": s.available_docs, "unique_tokens": s.available_tokens,
                 "target_tokens": s.target_tokens, "epochs": round(s.epochs, 3),
                 "over_warning": s.epochs > self.max_epochs_warning}
                for s in self.sources.values()]
        return pd.DataFrame(rows).set_index("source")

    def phase_table(self):
        """Tokens per source per phase (a DataFrame, phases as rows)."""
        import pandas as pd

        return pd.DataFrame([{"phase": p.name, "start": p.start_tokens, "end": p.end_tokens,
                              **p.targets} for p in self.phases]).set_index("phase")

    def to_dict(self) -> dict:
        return {"total_tokens": self.total_tokens, "unique_tokens": self.unique_tokens,
                "epochs": self.epochs, "max_epochs_warning": self.max_epochs_warning,
                "phases": [asdict(p) for p in self.phases],
                "sources": {n: {"available_tokens": s.available_tokens,
                                "available_docs": s.available_docs,
                                "target_tokens": s.target_tokens, "epochs": s.epochs}
                            for n, s in self.sources.items()},
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict) -> "MixturePlan":
        """The plan `to_dict` wrote (what stage 03's plan step records for its pack step)."""
        phases = [Phase(**p) for p in d["phases"]]
        sources = {n: SourceUsage(n, s["available_tokens"], s["available_docs"], s["target_tokens"])
                   for n, s in d["sources"].items()}
        return cls(d["total_tokens"], phases, sources, d["max_epochs_warning"], list(d["warnings"]))

    def plot(self, path: Union[str, Path, None] = None):
        """Tokens per source (unique vs repeated) and the phase schedule; saved if `path`."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import EngFormatter

        names = list(self.sources)
        n_axes = 2 if len(self.phases) > 1 else 1
        fig, axes = plt.subplots(1, n_axes, figsize=(5.5 * n_axes, 3.6), squeeze=False)
        ax = axes[0][0]
        unique = [min(self.sources[n].available_tokens, self.sources[n].target_tokens) for n in names]
        repeated = [self.sources[n].target_tokens - u for n, u in zip(names, unique)]
        ax.barh(names, unique, label="first epoch", color="tab:blue")
        ax.barh(names, repeated, left=unique, label="repeats", color="tab:orange")
        for i, n in enumerate(names):
            s = self.sources[n]
            ax.text(s.target_tokens, i, f" {s.target_tokens / self.total_tokens:.0%}, "
                    f"{s.epochs:.2f} ep", va="center", fontsize=8)
        ax.set_xlabel("tokens drawn")
        ax.set_title(f"mixture: {self.total_tokens:,} tokens, {self.epochs:.2f} epochs overall",
                     fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlim(0, 1.4 * max(s.target_tokens for s in self.sources.values()))
        ax.xaxis.set_major_formatter(EngFormatter())
        if n_axes == 2:
            ax2 = axes[0][1]
            left = [0.0] * len(self.phases)
            labels = [p.name for p in self.phases]
            for n in names:
                vals = [p.targets.get(n, 0) for p in self.phases]
                ax2.barh(labels, vals, left=left, label=n)
                left = [a + b for a, b in zip(left, vals)]
            ax2.invert_yaxis()
            ax2.set_xlabel("tokens")
            ax2.xaxis.set_major_formatter(EngFormatter())
            ax2.set_title("phase schedule", fontsize=9)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig


def plan_mixture(available_tokens: dict[str, int], weights: dict[str, float], total_tokens: int,
                 phases: Optional[Sequence[tuple[int, dict[str, float]]]] = None, *,
                 phase_names: Optional[Sequence[str]] = None,
                 available_docs: Optional[dict[str, int]] = None,
                 max_epochs_warning: float = 10.0, tolerance: float = 1e-6) -> MixturePlan:
    """Token targets and epochs per source for `total_tokens`.

    `available_tokens` is one epoch of each source (documents plus their EOS); `weights` the
    shares of the budget; `phases` an optional schedule of `(until_tokens, weights)`, the
    last ending at `total_tokens` (phi-3: mostly web first, then filtered web + synthetic).
    """
    if total_tokens <= 0:
        raise MixtureError(f"total_tokens must be > 0, got {total_tokens}")
    schedule = list(phases) if phases else [(total_tokens, dict(weights))]
    if schedule[-1][0] != total_tokens:
        raise MixtureError(f"the last phase must end at total_tokens={total_tokens}, "
                           f"got {schedule[-1][0]}")
    names = phase_names or [f"phase {i + 1}" for i in range(len(schedule))]
    plan_phases, start = [], 0
    for (end, w), name in zip(schedule, names):
        if end <= start:
            raise MixtureError(f"{name}: until_tokens={end} must be after the previous phase ({start})")
        _check_weights(name, w, available_tokens, tolerance)
        plan_phases.append(Phase(name, start, end, dict(w), _split_tokens(end - start, w)))
        start = end
    docs = available_docs or {}
    sources = {n: SourceUsage(n, int(available_tokens[n]), int(docs.get(n, 0)),
                              sum(p.targets.get(n, 0) for p in plan_phases))
               for n in available_tokens}
    plan = MixturePlan(total_tokens, plan_phases, sources, max_epochs_warning)
    for s in sources.values():
        if s.target_tokens and s.available_tokens <= 0:
            raise MixtureError(f"source {s.name!r} has weight but no training tokens")
        if s.epochs > max_epochs_warning:
            msg = (f"source {s.name!r} is repeated {s.epochs:.1f} epochs ({s.target_tokens:,} "
                   f"tokens drawn from {s.available_tokens:,}), more than max_epochs_warning="
                   f"{max_epochs_warning:g}")
            plan.warnings.append(msg)
            warnings.warn(msg, MixtureWarning, stacklevel=2)
    return plan


def _check_weights(where: str, weights: dict[str, float], available: dict, tol: float) -> None:
    for n, w in weights.items():
        if n not in available:
            raise MixtureError(f"{where}: unknown source {n!r} (sources: {', '.join(available)})")
        if w < 0:
            raise MixtureError(f"{where}: weight of {n!r} must be >= 0, got {w}")
    total = sum(weights.values())
    if abs(total - 1.0) > tol:
        raise MixtureError(f"{where}: weights must sum to 1, got {total:g}")


def _split_tokens(tokens: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer shares that add up exactly to `tokens` (largest remainder)."""
    raw = {n: tokens * w for n, w in weights.items()}
    out = {n: int(v) for n, v in raw.items()}
    rest = tokens - sum(out.values())
    for n in sorted(raw, key=lambda n: raw[n] - out[n], reverse=True)[:rest]:
        out[n] += 1
    return out
