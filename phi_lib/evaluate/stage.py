"""Stage 06 as the notebook runs it: one verb per cell.

    stage = EvalStage(cfg, out)
    stage.evaluate()            # every task on the model and the reference models (resumes),
                                # and the learning curve when `evaluate.curve_every` is set
    stage.table(); stage.plot(); stage.samples()
    manifest = stage.write_manifest()

`evaluate.model` is evaluated into `out/` (results.json, tasks/, samples/), each reference
model into `out/reference/<name>/`. Every task result carries its fingerprint (the settings
it depends on, the model's content identity, its benchmark files: `harness.task_fingerprint`),
so a retrained checkpoint re-runs the checkpoint's tasks and reuses the references'.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from phi_lib.evaluate import report
from phi_lib.evaluate.curves import evaluate_curve
from phi_lib.evaluate.data import task_files
from phi_lib.evaluate.harness import HEADLINE, evaluate_model, headline
from phi_lib.hf_models import model_slug
from phi_lib.io import read_json
from phi_lib.stage_base import BaseStage

FIGURE = "benchmarks.png"


class EvalStage(BaseStage):
    """Stage 06: the phi-1.5 benchmark table for `evaluate.model` and its references."""

    number = "06"

    def __init__(self, cfg, out=None):
        super().__init__(cfg, out)
        ev = cfg.evaluate  # the benchmark files read (the runner re-checks them)
        for task in ev.tasks + (ev.curve_tasks if ev.curve_every else []):
            for role, path in task_files(task, cfg.run.data_dir).items():
                if path is not None:
                    self.inputs[f"{task}.{role}"] = path

    def folders(self) -> dict[str, Path]:
        """Model name -> the folder of its results (the evaluated model first)."""
        ev = self.cfg.evaluate
        out = {ev.model: self.out}
        out.update({r: self.out / "reference" / model_slug(r) for r in ev.reference_models
                    if r != ev.model})
        return out

    # ------------------------------------------------------------------ steps
    def evaluate(self, progress: bool = True) -> dict:
        """Run every task on every model (a task whose fingerprint matches is reused); returns
        per model the tasks computed now, reused and skipped (data not available offline)."""
        ev, folders = self.cfg.evaluate, self.folders()
        kw = dict(cfg=ev, run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir,
                  progress=progress, tokenizer=self.cfg.model.tokenizer)
        with self.timed() as t:
            runs = {name: evaluate_model(name, ev.tasks, folder, **kw)
                    for name, folder in folders.items()}
            for old in (self.out / "reference").glob("*"):  # references no longer listed
                if old not in folders.values():
                    shutil.rmtree(old)
            curve = evaluate_curve(self.cfg, self.out, progress=progress)
        main = runs[ev.model]
        metrics = headline(main)
        for name, res in runs.items():
            if name != ev.model:
                metrics.update({f"ref/{model_slug(name)}/{k}": v for k, v in headline(res).items()
                                if k.split("/")[1] == HEADLINE.get(k.split("/")[0])})
        counts = {f"{t}/n": n for t, n in main["n"].items()}
        counts.update({f"{t}/corrupt": c for t, c in main["corrupt"].items()})
        counts.update(tasks_skipped=len(main["skipped"]),
                      tasks_computed=sum(len(r["computed"]) for r in runs.values()),
                      tasks_reused=sum(len(r["reused"]) for r in runs.values()),
                      curve_points=len(curve["steps"]) if curve else 0)
        self.record("evaluate", counts=counts, metrics=metrics, seconds=t["seconds"],
                    models={n: r["model_identity"] for n, r in runs.items()},
                    skipped=main["skipped"])
        return {name: {"computed": r["computed"], "reused": r["reused"], "skipped": r["skipped"]}
                for name, r in runs.items()}

    def runs(self) -> dict[str, dict]:
        """Model name -> its `results.json` (what `evaluate` wrote)."""
        return {name: read_json(folder / "results.json") for name, folder in self.folders().items()}

    def table(self):
        """Our numbers (± stderr, n) next to the phi-1.5 paper and chance."""
        df = report.comparison_table(self.runs())
        self.record("table", counts={"table_tasks": len(df)})
        return df

    def plot(self):
        """Grouped bars per task (`benchmarks.png`)."""
        fig = report.bar_plot(self.runs())
        self.save_figure(fig, FIGURE)
        self.record("plot", counts={"figures": 1})
        return fig

    def samples(self, per_task: int = 2):
        """A few per-item samples of each task of the evaluated model (prompt tail,
        choices/completion, pred, gold)."""
        import pandas as pd

        rows = []
        for task in read_json(self.out / "results.json")["results"]:
            with open(self.out / "samples" / f"{task}.jsonl", encoding="utf-8") as f:
                lines = [line for _, line in zip(range(per_task), f)]
            for line in lines:
                s = json.loads(line)
                prompt = s["prompt"] if isinstance(s["prompt"], str) else s["prompt"][0]
                rows.append({"task": task, "prompt (end)": prompt[-120:],
                             "answer": s.get("choices", s.get("completions", s.get("completion"))),
                             "pred": s.get("pred", s.get("statuses")), "gold": s.get("gold"),
                             "correct": s.get("acc", s.get("correct", s.get("exact_match")))})
        self.record("samples", counts={"sample_rows": len(rows)})
        return pd.DataFrame(rows)

    def write_manifest(self, **extra) -> dict:
        """Flat `task/metric` numbers of the evaluated model (references prefixed
        `ref/<name>/`), item counts, tasks computed/reused/skipped, each model's identity."""
        from phi_lib.evaluate.generation import runs_programs
        from phi_lib.sandbox import isolation_report

        ev = self.step_stats("evaluate") or {}
        cfg = self.cfg.evaluate  # the walls the code tasks ran behind (None: no code ran)
        ran_code = any(runs_programs(t, cfg.gsm8k_mode) for t in cfg.tasks)
        extra.setdefault("sandbox", isolation_report(cfg.sandbox_isolation) if ran_code else None)
        return super().write_manifest(models=ev.get("models", {}),
                                      skipped=ev.get("skipped", {}), **extra)
