"""Stage 06 as the notebook runs it: the configured model plus reference models, the
manifest, and a peek at per-item samples."""
from __future__ import annotations

import json
from pathlib import Path

from phi_lib.evaluate.generation import runs_programs
from phi_lib.evaluate.harness import HEADLINE, evaluate_model, headline
from phi_lib.hf_models import model_slug
from phi_lib.io import write_manifest
from phi_lib.sandbox import isolation_report


def run_stage(cfg, out: Path, progress: bool = True) -> dict[str, dict]:
    """Evaluate `cfg.evaluate.model` into `out/` (results.json, samples/) and each reference
    model into `out/reference/<name>/`; returns display name -> results."""
    ev = cfg.evaluate
    kw = dict(cfg=ev, run_dir=cfg.run_dir, data_dir=cfg.run.data_dir, progress=progress,
              tokenizer=cfg.model.tokenizer)
    runs = {ev.model: evaluate_model(ev.model, ev.tasks, out, **kw)}
    for ref in ev.reference_models:
        if ref != ev.model:
            runs[ref] = evaluate_model(ref, ev.tasks, Path(out) / "reference" / model_slug(ref), **kw)
    return runs


def samples_table(out: Path, per_task: int = 2):
    """A few per-item samples of each task (prompt tail, choices/completion, pred, gold)."""
    import pandas as pd

    rows = []
    for path in sorted((Path(out) / "samples").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:per_task]:
            s = json.loads(line)
            prompt = s["prompt"] if isinstance(s["prompt"], str) else s["prompt"][0]
            rows.append({"task": path.stem, "prompt (end)": prompt[-120:],
                         "answer": s.get("choices", s.get("completions", s.get("completion"))),
                         "pred": s.get("pred", s.get("statuses")), "gold": s.get("gold"),
                         "correct": s.get("acc", s.get("correct", s.get("exact_match")))})
    return pd.DataFrame(rows)


def write_stage_manifest(cfg, out: Path, runs: dict[str, dict], figures=()) -> dict:
    """The stage contract: flat `task/metric` numbers of the evaluated model (references
    prefixed `ref/<name>/`), item counts and skipped tasks."""
    main = runs[cfg.evaluate.model]
    metrics = headline(main)
    for name, res in runs.items():
        if name != cfg.evaluate.model:
            metrics.update({f"ref/{model_slug(name)}/{k}": v for k, v in headline(res).items()
                            if k.split("/")[1] == HEADLINE.get(k.split("/")[0])})
    counts = {f"{t}/n": n for t, n in main["n"].items()}
    counts.update({f"{t}/corrupt": c for t, c in main["corrupt"].items()})
    counts["tasks_skipped"] = len(main["skipped"])
    ran_code = any(runs_programs(t, cfg.evaluate.gsm8k_mode) for t in main["results"])
    sandbox = isolation_report(cfg.evaluate.sandbox_isolation) if ran_code else None
    return write_manifest(out, cfg, "06", metrics=metrics, counts=counts, figures=list(figures),
                          timings={f"{t}/s": s for t, s in main["time_s"].items()},
                          skipped=main["skipped"], models=list(runs),
                          sandbox=sandbox)
