"""The one stage contract: every stage of the workbook is a :class:`BaseStage`.

datatrove's pipeline blocks are the model: a stage has named inputs (the data files and
upstream outputs it reads), named outputs (``STAGES[n].outputs``), steps that each read and
write files, stats per step (counts, drop reasons, metrics, time), and a done marker with
its fingerprint. The notebook calls the same verbs on every stage::

    stage = SomeStage(cfg, out)     # phi_lib.notebook.setup gives cfg, out
    stage.<step>()                  # one cell per step: reads files, writes files, records stats
    stage.<table>() / stage.<plot>()
    manifest = stage.write_manifest()

A step records its stats with :meth:`BaseStage.record` into ``.steps/<step>.json`` (so a
manifest written after a kernel restart still has every step's numbers, and steps share no
state in memory). Work a step could not do this time and that is no result (requests that
failed with a transient backend error) is recorded as ``pending={"count": n, "message":
...}``: the manifest counts it, then :class:`StageIncomplete` stops the stage, so the runner
does not mark it done and the next run does that work. :meth:`BaseStage.step_current` tells whether a step's recorded fingerprint
still matches: the step can then be skipped. Artifacts inside a step (records, caches,
checkpoints) carry their own fingerprints (phi_lib.provenance).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

from phi_lib.io import atomic_write_json, read_json, write_manifest
from phi_lib.provenance import Fingerprint, is_current
from phi_lib.stages import STAGES

STEPS_DIR = ".steps"


class StageIncomplete(RuntimeError):
    """A step left work pending (not a result): the manifest is written, the stage is not
    done, and the next run does the pending work."""


class BaseStage:
    """A stage: `cfg`, its output folder `out`, its steps' stats, its manifest."""

    number: ClassVar[str] = ""
    """The stage number in phi_lib.stages.STAGES (`"01"` ...)."""

    def __init__(self, cfg, out: Optional[Path] = None):
        self.cfg = cfg
        self.spec = STAGES[self.number]
        self.out = Path(out) if out is not None else self.spec.dir(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        self.inputs: dict[str, Path] = {}
        """Data files read, by name: their digests go in the manifest (the runner reruns the
        stage when one changes)."""
        self.figures: list[str] = []
        """Plots written (relative to `out`), for the report."""

    # ------------------------------------------------------------------ fingerprints
    @property
    def fingerprint(self) -> Fingerprint:
        """The stage's fingerprint: its config sections, data folder, upstream outputs."""
        return self.spec.fingerprint(self.cfg)

    def step_fingerprint(self, name: str) -> Optional[dict]:
        return (self.step_stats(name) or {}).get("fingerprint")

    def step_current(self, name: str, fp: Fingerprint) -> bool:
        """True if step `name` last finished with fingerprint `fp` (it can be skipped)."""
        return is_current(self.step_fingerprint(name), fp)

    # ------------------------------------------------------------------ stats
    def record(self, name: str, *, fingerprint: Optional[Fingerprint] = None,
               counts: Optional[dict] = None, drops: Optional[dict] = None,
               metrics: Optional[dict] = None, seconds: Optional[float] = None,
               **extra: Any) -> dict:
        """Write step `name`'s stats (atomically): what it kept, dropped (by reason), measured."""
        stats = {"step": name, "fingerprint": fingerprint.to_dict() if fingerprint else None,
                 "counts": dict(counts or {}), "drops": dict(drops or {}),
                 "metrics": dict(metrics or {}), "seconds": seconds,
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        atomic_write_json(self.out / STEPS_DIR / f"{name}.json", stats)
        return stats

    def step_stats(self, name: str) -> Optional[dict]:
        path = self.out / STEPS_DIR / f"{name}.json"
        try:
            return read_json(path)
        except (OSError, ValueError):
            return None

    def all_stats(self) -> list[dict]:
        """Every recorded step, in the order they finished."""
        folder = self.out / STEPS_DIR
        stats = [s for s in (self.step_stats(p.stem) for p in sorted(folder.glob("*.json"))) if s]
        return sorted(stats, key=lambda s: s.get("finished_at") or "")

    @contextmanager
    def timed(self) -> Iterator[dict]:
        """`with self.timed() as t: ...` then `t["seconds"]`."""
        t: dict = {}
        t0 = time.time()
        try:
            yield t
        finally:
            t["seconds"] = round(time.time() - t0, 2)

    # ------------------------------------------------------------------ figures and manifest
    def save_figure(self, fig, name: str) -> Path:
        """Write a plot into the stage folder and list it for the report."""
        from phi_lib.io import save_figure

        path = save_figure(fig, self.out / name)
        if name not in self.figures:
            self.figures.append(name)
        return path

    def write_manifest(self, metrics: Optional[dict] = None, counts: Optional[dict] = None,
                       drops: Optional[dict] = None, **extra: Any) -> dict:
        """The stage's manifest: every step's counts, drops, metrics and time, merged (steps
        in order; the arguments last), the data files read, the figures, the fingerprint."""
        all_counts, all_drops, all_metrics, timings = {}, {}, {}, {}
        for s in self.all_stats():
            all_counts.update(s.get("counts") or {})
            for reason, n in (s.get("drops") or {}).items():
                all_drops[reason] = all_drops.get(reason, 0) + n
            all_metrics.update(s.get("metrics") or {})
            if s.get("seconds") is not None:
                timings[s["step"]] = s["seconds"]
        all_counts.update(counts or {})
        all_drops.update(drops or {})
        all_metrics.update(metrics or {})
        figures = [f for f in self.figures if (self.out / f).is_file()]
        pending = {s["step"]: s["pending"] for s in self.all_stats() if s.get("pending")}
        if pending:
            extra["pending"] = pending
        manifest = write_manifest(self.out, self.cfg, self.number, metrics=all_metrics,
                                  counts=all_counts, drops=all_drops, figures=figures,
                                  timings=timings, inputs=self.inputs, **extra)
        if pending:
            raise StageIncomplete(f"stage {self.spec.dirname} is not done: " + "; ".join(
                f"{step}: {p.get('message') or p}" for step, p in pending.items())
                + f" (counted in {self.out / 'manifest.json'} under `pending`); run it again "
                  f"to finish: python -m phi_lib run ... --stages {self.number}")
        return manifest
