"""Stage 07 tables and plots: ToxiGen scores per group, grade counts per category, and the
agreement between the human and the LLM judge."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Union

from phi_lib.io import save_figure
from phi_lib.safety.judge import GRADES
from phi_lib.safety.safety_score import GroupScore


PAPER_PROBES = {"phi-1.5": {"pass": 47, "fail": 34, "did_not_understand": 4}}
"""phi-1.5 sec. 6 (RECIPE.md "Safety"): hand grades of the 86 prompts; Llama2-7B and
Falcon-7B passed fewer than 20."""
UNGRADED = ("unparsed", "ungraded")
"""Columns beside the grades: judge replies without a grade; items nobody graded yet."""


def toxigen_table(scores: dict[str, dict[str, GroupScore]]):
    """Groups x models: safety score (p-value; * = significant), with the mean over groups."""
    import pandas as pd

    table: dict[str, dict[str, str]] = {}
    for model, groups in scores.items():
        for g, s in groups.items():
            star = "*" if s.significant else ""
            table.setdefault(g, {})[model] = f"{s.score:.3f}{star} (p={s.p_value:.2g}, " \
                                             f"n={s.n_toxic}+{s.n_benign})"
        mean = sum(s.score for s in groups.values()) / len(groups)
        table.setdefault("mean over groups", {})[model] = f"{mean:.3f}"
    return pd.DataFrame.from_dict(table, orient="index")


def toxigen_plot(scores: dict[str, dict[str, GroupScore]],
                 path: Optional[Union[str, Path]] = None):
    """Per-group bars, models side by side (as phi-1.5 Figure 2); 0.5 = no preference.
    Saved as PNG at `path` if given; returns the figure."""
    import matplotlib

    matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(
        ("module://matplotlib_inline", "module://ipykernel")) else None
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(g for s in scores.values() for g in s))
    models = list(scores)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(groups)), 4))
    x = np.arange(len(groups))
    for j, model in enumerate(models):
        vals = [scores[model][g].score if g in scores[model] else 0 for g in groups]
        ax.bar(x + (j - (len(models) - 1) / 2) * width, vals, width, label=model)
    ax.axhline(0.5, color="gray", linestyle="dotted", label="no preference")
    ax.set_xticks(x, [g.replace("_", "\n") for g in groups], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("safety score (higher = safer)")
    ax.set_title("ToxiGen safety score per group (Hosseini et al. 2023)")
    ax.legend(fontsize=7, loc="upper right")
    if path is not None:
        save_figure(fig, path)
    return fig


def grade_counts(items: Sequence[dict], grades: dict[str, Optional[str]]) -> dict:
    """`{model: {category: {pass, fail, did_not_understand, unparsed, ungraded}}}` plus a
    `total` category; `grades` maps item key -> grade (None = reply without a grade; a
    missing key = not graded)."""
    from phi_lib.safety.judge import item_key

    out: dict[str, dict[str, Counter]] = {}
    for it in items:
        key = item_key(it)
        col = (grades[key] or "unparsed") if key in grades else "ungraded"
        per = out.setdefault(it["model"], {})
        for cat in (it["category"], "total"):
            per.setdefault(cat, Counter({c: 0 for c in GRADES + UNGRADED}))[col] += 1
    return {m: {c: dict(n) for c, n in sorted(per.items(), key=lambda kv: kv[0] == "total")}
            for m, per in out.items()}


def counts_table(counts: dict[str, dict]):
    """Rows (model, grader, category), columns the grades; `counts` = {grader: grade_counts}."""
    import pandas as pd

    rows = [{"model": m, "grader": grader, "category": cat, **n}
            for grader, by_model in counts.items() for m, cats in by_model.items()
            for cat, n in cats.items()]
    if not rows:
        return pd.DataFrame(columns=["model", "grader", "category", *GRADES, *UNGRADED])
    return pd.DataFrame(rows).set_index(["model", "grader", "category"])


def agreement(human: dict[str, str], judge: dict[str, Optional[str]]) -> dict:
    """Cohen's kappa and raw agreement over the items both graded (judge grade parsed), with
    the confusion counts; kappa is None when it is undefined (fewer than 2 items, or both
    graders used a single identical grade)."""
    from sklearn.metrics import cohen_kappa_score

    both = sorted(k for k in human if judge.get(k) is not None)
    res = {"n": len(both), "human_only": sum(1 for k in human if judge.get(k) is None),
           "agreement": None, "kappa": None, "confusion": {}}
    if not both:
        return res
    h, j = [human[k] for k in both], [judge[k] for k in both]
    res["agreement"] = sum(a == b for a, b in zip(h, j)) / len(both)
    if len(both) >= 2 and len(set(h) | set(j)) > 1:
        kappa = float(cohen_kappa_score(h, j, labels=list(GRADES)))
        res["kappa"] = None if math.isnan(kappa) else kappa
    res["confusion"] = {f"{a}|{b}": n for (a, b), n in sorted(Counter(zip(h, j)).items())}
    return res
