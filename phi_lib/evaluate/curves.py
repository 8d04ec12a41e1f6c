"""Learning curves: stage 05's checkpoints evaluated in series, and which tasks give signal.

    curve = evaluate_curve(cfg, out)        # out/curve/step-N/ (results.json, samples/), curve.json
    signal_table({seed: curve_json, ...})   # per task: monotonicity and signal-to-noise

Every `evaluate.curve_every` steps (the checkpoints stage 05 kept at those steps), the
`evaluate.curve_tasks` (default: the early-signal group) on `evaluate.curve_limit` items per
task. Each checkpoint's folder is an `evaluate_model` folder, so every point is fingerprinted
(its checkpoint's content, the capped limit, the data files) and resumes like stage 06.

The two criteria FineWeb used to trust a task at small scale:
- monotonicity: Spearman correlation of the score with the training step (averaged over seeds);
- signal-to-noise: the spread of the seed-mean score across checkpoints over the mean spread
  across seeds at a checkpoint. With one seed the noise cannot be measured (nan).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from phi_lib.io import atomic_write_json, read_json

CURVE_DIR = "curve"
CURVE_FILE = "curve.json"


def curve_metric(task_metrics: dict) -> str:
    """The metric a curve follows: length-normalized accuracy where the task has it."""
    return "acc_norm" if "acc_norm" in task_metrics else "acc"


def curve_checkpoints(ckpt_root: Path, every: int) -> list[tuple[int, Path]]:
    """(step, folder) of the kept checkpoints whose step is a multiple of `every`, in order."""
    out = []
    for d in Path(ckpt_root).glob("step-*"):
        try:
            step = int(d.name.split("-", 1)[1])
        except ValueError:
            continue
        if step % every == 0 and (d / "config.json").is_file():
            out.append((step, d))
    return sorted(out)


def curve_task_limits(tasks: Sequence[str], limit: Optional[int]) -> dict[str, int]:
    """MMLU's limit is per subject: its curve takes `limit` // 57 per subject (at least 1),
    about `limit` items in all like every other task."""
    from phi_lib.evaluate.data import MMLU_SUBJECTS

    if limit is None:
        return {}
    return {t: max(1, limit // len(MMLU_SUBJECTS)) for t in tasks if t.startswith("mmlu")}


def evaluate_curve(cfg, out: Path, progress: bool = False) -> Optional[dict]:
    """Evaluate every `curve_every`-th checkpoint of the run on the curve tasks; writes and
    returns `out/curve/curve.json` ({steps, tasks: {task: {metric, scores}}}); None if off."""
    from phi_lib.evaluate.harness import evaluate_model

    ev = cfg.evaluate
    if ev.curve_every is None:
        return None
    points = curve_checkpoints(cfg.run_dir / "05_train" / "checkpoints", ev.curve_every)
    capped = dataclasses.replace(ev, tasks=list(ev.curve_tasks), limit=ev.curve_limit,
                                 task_limits=curve_task_limits(ev.curve_tasks, ev.curve_limit))
    root = Path(out) / CURVE_DIR
    results = {}
    for step, folder in points:
        results[step] = evaluate_model(str(folder), capped.tasks, root / f"step-{step}",
                                       cfg=capped, data_dir=cfg.run.data_dir, progress=progress,
                                       tokenizer=cfg.model.tokenizer)["results"]
    keep = {f"step-{s}" for s in results}
    for old in root.glob("step-*"):  # points no longer on the curve
        if old.name not in keep:
            import shutil

            shutil.rmtree(old)
    tasks = {}
    for task in capped.tasks:
        have = [s for s in results if task in results[s]]
        if not have:
            continue
        metric = curve_metric(results[have[0]][task])
        tasks[task] = {"metric": metric, "steps": have,
                       "scores": [results[s][task][metric] for s in have]}
    doc = {"every": ev.curve_every, "limit": ev.curve_limit, "steps": sorted(results),
           "tasks": tasks}
    atomic_write_json(root / CURVE_FILE, doc)
    return doc


def read_curve(eval_dir: Path) -> Optional[dict]:
    path = Path(eval_dir) / CURVE_DIR / CURVE_FILE
    return read_json(path) if path.is_file() else None


# ----------------------------------------------------------------------------- signal quality
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant or n < 2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def monotonicity(steps: Sequence[float], scores: np.ndarray) -> float:
    """Mean over seeds (rows of `scores`, (seeds, checkpoints)) of Spearman(score, step)."""
    rhos = [spearman(steps, row) for row in np.atleast_2d(scores)]
    rhos = [r for r in rhos if not math.isnan(r)]
    return float(np.mean(rhos)) if rhos else float("nan")


def signal_to_noise(scores: np.ndarray) -> float:
    """(seeds, checkpoints): std over checkpoints of the seed-mean curve / mean over
    checkpoints of the std across seeds (ddof 1). nan with one seed; inf without seed noise."""
    s = np.atleast_2d(np.asarray(scores, float))
    if s.shape[0] < 2 or s.shape[1] < 2:
        return float("nan")
    signal = float(s.mean(axis=0).std(ddof=1))
    noise = float(s.std(axis=0, ddof=1).mean())
    return signal / noise if noise > 0 else (float("inf") if signal > 0 else float("nan"))


def curve_matrix(curves: Sequence[dict], task: str) -> Optional[tuple[list[int], np.ndarray, str]]:
    """(steps every seed has, (seeds, steps) scores, metric) of `task` over seed curves."""
    per = [c["tasks"].get(task) for c in curves if c]
    if not per or any(p is None for p in per):
        return None
    steps = sorted(set.intersection(*[set(p["steps"]) for p in per]))
    if not steps:
        return None
    m = np.array([[dict(zip(p["steps"], p["scores"]))[s] for s in steps] for p in per])
    return steps, m, per[0]["metric"]


def signal_table(curves: Sequence[dict]) -> list[dict]:
    """One row per task of a variant's seed curves: metric, checkpoints, seeds, first and last
    seed-mean score, monotonicity, signal-to-noise, and whether the task gives signal
    (monotonicity >= 0.5 and SNR >= 2 where SNR is measured)."""
    rows = []
    tasks = sorted({t for c in curves if c for t in c["tasks"]})
    for task in tasks:
        got = curve_matrix(curves, task)
        if got is None:
            continue
        steps, m, metric = got
        mono, snr = monotonicity(steps, m), signal_to_noise(m)
        signal = (not math.isnan(mono) and mono >= 0.5) and (math.isnan(snr) or snr >= 2)
        rows.append({"task": task, "metric": metric, "checkpoints": len(steps),
                     "seeds": int(m.shape[0]), "first": float(m[:, 0].mean()),
                     "last": float(m[:, -1].mean()), "monotonicity": mono,
                     "snr": snr, "signal": bool(signal)})
    return rows
