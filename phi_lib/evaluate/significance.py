"""Is a difference between two variants more than noise? Per-item scores, seeds, a paired test.

    a = item_matrix([run_a_seed0, run_a_seed1], "piqa", "acc_norm")   # (seeds, items)
    b = item_matrix([run_b_seed0, run_b_seed1], "piqa", "acc_norm")
    res = paired_difference(a, b)       # {"diff", "lo", "hi", "p", "significant", ...}
    in_words("textbooks", "web", "piqa/acc_norm", res)

Everything is recomputed from stage 06's `samples/<task>.jsonl` (one line per item, with its
log-likelihoods, prediction and 0/1 scores): no model is needed.

The test is a paired bootstrap over items (the same items in both variants, resampled together,
so item difficulty cancels) with the seeds of each variant resampled too (seeds pooled: the
interval covers seed noise as well as item noise). With one seed per variant it is the plain
paired bootstrap of lm-eval/FineWeb-style comparisons.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

N_BOOT = 4000
ALPHA = 0.05


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean over seeds, n seeds); se is nan for one seed."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se, len(x)


def item_value(sample: dict, metric: str) -> Optional[float]:
    """One item's score for `metric` from its sample line (None: the line has no such score)."""
    v = sample.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if metric == "exact_match" and isinstance(sample.get("correct"), list):  # GSM8K
        return float(bool(sample["correct"][0]))
    return None


def item_scores(eval_dir: Path, task: str, metric: str) -> Optional[dict[int, float]]:
    """doc_id -> score of `task`'s items in a stage-06 folder (None: task or metric absent)."""
    path = Path(eval_dir) / "samples" / f"{task}.jsonl"
    if not path.is_file():
        return None
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)
            v = item_value(s, metric)
            if v is None:
                return None
            out[int(s["doc_id"])] = v
    return out


def item_matrix(eval_dirs: Sequence[Path], task: str, metric: str,
                items: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
    """(seeds, items) scores of one variant over its seeds' stage-06 folders, on `items`
    (doc ids; default: those every folder has). None if a folder lacks the task."""
    per = [item_scores(d, task, metric) for d in eval_dirs]
    if not per or any(p is None for p in per):
        return None
    ids = sorted(set.intersection(*[set(p) for p in per])) if items is None else list(items)
    return np.array([[p[i] for i in ids] for p in per], dtype=float)


def common_items(*dirs_per_variant: Sequence[Path], task: str, metric: str) -> list[int]:
    """Doc ids every run of every variant scored (a paired test compares only those)."""
    sets = []
    for dirs in dirs_per_variant:
        for d in dirs:
            s = item_scores(d, task, metric)
            if s is None:
                return []
            sets.append(set(s))
    return sorted(set.intersection(*sets)) if sets else []


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, alpha: float = ALPHA,
                      seed: int = 0) -> dict:
    """Mean score of `a` minus `b` (arrays (seeds, items), the same items in the same order)
    with its bootstrap (1 - alpha) interval; `significant` when the interval excludes 0.

    Each resample draws the items once for both variants (paired) and each variant's seeds
    with replacement; a variant's score is the mean over its drawn seeds and items."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"paired test needs the same items in both: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))                               # (B, items)

    def resampled(x: np.ndarray) -> np.ndarray:
        s = x.shape[0]
        draws = rng.integers(0, s, size=(n_boot, s))                          # (B, seeds)
        w = (draws[:, :, None] == np.arange(s)).mean(axis=1)                  # (B, seeds)
        per_item = w @ x                                                      # (B, items)
        return np.take_along_axis(per_item, idx, axis=1).mean(axis=1)        # (B,)

    boot = resampled(a) - resampled(b)
    diff = float(a.mean() - b.mean())
    lo, hi = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    return {"diff": diff, "lo": lo, "hi": hi, "p": p, "alpha": alpha,
            "significant": bool(lo > 0 or hi < 0), "n_items": n,
            "n_seeds": [int(a.shape[0]), int(b.shape[0])]}


def in_words(name_a: str, name_b: str, metric: str, res: dict) -> str:
    """One line a reader can act on: who is ahead, by how much, and whether it is noise."""
    ci = f"{100 * (1 - res['alpha']):.0f}% CI [{res['lo']:+.3f}, {res['hi']:+.3f}]"
    head = (f"{metric}: {name_a} - {name_b} = {res['diff']:+.3f} ({ci}, p={res['p']:.3f}, "
            f"{res['n_items']} items, seeds {res['n_seeds'][0]}+{res['n_seeds'][1]})")
    if not res["significant"]:
        return f"{head}: within noise (the interval includes 0)"
    ahead = name_a if res["diff"] > 0 else name_b
    return f"{head}: {ahead} is better (the interval clears 0)"
