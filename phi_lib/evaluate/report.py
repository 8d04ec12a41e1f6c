"""Stage 06 report: our results next to the phi-1.5 paper's table, as a table and a bar plot."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from phi_lib.io import save_figure

PAPER = {
    # phi-1.5 paper, table 1-3 (RECIPE.md "Evaluation"); GSM8K/HumanEval/MBPP in percent there
    "phi-1.5 (paper)": {"winogrande": .734, "arc_easy": .756, "arc_challenge": .444,
                        "boolq": .758, "siqa": .526, "piqa": .766, "hellaswag": .476,
                        "openbookqa": .372, "mmlu": .376, "squad": .72, "gsm8k": .402,
                        "humaneval": .341, "mbpp": .377},
    "phi-1.5-web (paper)": {"winogrande": .740, "arc_easy": .761, "arc_challenge": .449,
                            "siqa": .530, "piqa": .770, "mmlu": .379, "gsm8k": .446,
                            "humaneval": .414, "mbpp": .435},
}
"""Published numbers (the paper's headline metric of each task)."""

CHANCE = {"winogrande": .5, "arc_easy": .25, "arc_challenge": .25, "boolq": .5, "siqa": 1 / 3,
          "piqa": .5, "hellaswag": .25, "openbookqa": .25, "mmlu": .25, "mmlu_cloze": .25,
          "commonsense_qa": .2, "commonsense_qa_cloze": .2}


def comparison_rows(runs: dict[str, dict], tasks: Optional[list[str]] = None) -> list[dict]:
    """One row per (task, model): headline metric, stderr, n, the paper's number, chance.

    `runs` maps a display name to a `results.json` dict (see `harness.evaluate_model`).
    """
    from phi_lib.evaluate.harness import HEADLINE

    tasks = tasks or sorted({t for r in runs.values() for t in r["results"]},
                            key=list(HEADLINE).index)
    rows = []
    for task in tasks:
        metric = HEADLINE[task]
        for name, res in runs.items():
            m = res["results"].get(task)
            if not m or metric not in m:
                continue
            rows.append({"task": task, "metric": metric, "model": name, "value": m[metric],
                         "stderr": m.get(f"{metric}_stderr"), "acc_norm": m.get("acc_norm"),
                         "n": m["n"], "paper_phi-1.5": PAPER["phi-1.5 (paper)"].get(task),
                         "chance": CHANCE.get(task)})
    return rows


def comparison_table(runs: dict[str, dict], tasks: Optional[list[str]] = None):
    """A pandas DataFrame: tasks x models (value ± stderr), plus the paper's columns."""
    import pandas as pd

    rows = comparison_rows(runs, tasks)
    table: dict[str, dict] = {}
    for r in rows:
        t = table.setdefault(f"{r['task']} ({r['metric']})", {})
        se = f" ± {r['stderr']:.3f}" if r["stderr"] == r["stderr"] and r["stderr"] else ""
        t[f"{r['model']} (n={r['n']})"] = f"{r['value']:.3f}{se}"
        for paper, nums in PAPER.items():
            if r["task"] in nums:
                t[paper] = f"{nums[r['task']]:.3f}"
        if r["chance"] is not None:
            t["chance"] = f"{r['chance']:.3f}"
    return pd.DataFrame.from_dict(table, orient="index").fillna("-")


def bar_plot(runs: dict[str, dict], path: Optional[Union[str, Path]] = None,
             tasks: Optional[list[str]] = None):
    """Grouped bars per task: each model with stderr error bars, the paper's phi-1.5 as a
    black tick and chance as a dotted tick. Saved as PNG at `path` if given; returns the figure."""
    import matplotlib

    matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(
        ("module://matplotlib_inline", "module://ipykernel")) else None
    import matplotlib.pyplot as plt
    import numpy as np

    rows = comparison_rows(runs, tasks)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(runs)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 4))
    x = np.arange(len(tasks))
    for j, name in enumerate(models):
        vals = [next((r for r in rows if r["task"] == t and r["model"] == name), None) for t in tasks]
        ax.bar(x + (j - (len(models) - 1) / 2) * width,
               [v["value"] if v else 0 for v in vals], width,
               yerr=[(v["stderr"] or 0) if v and v["stderr"] == v["stderr"] else 0 for v in vals],
               capsize=3, label=name)
    for i, t in enumerate(tasks):
        if t in PAPER["phi-1.5 (paper)"]:
            ax.hlines(PAPER["phi-1.5 (paper)"][t], i - 0.45, i + 0.45, colors="black",
                      label="phi-1.5 (paper)" if i == 0 else None)
        if t in CHANCE:
            ax.hlines(CHANCE[t], i - 0.45, i + 0.45, colors="gray", linestyles="dotted",
                      label="chance" if i == 0 else None)
    ax.set_xticks(x, [f"{t}\n{rows[[r['task'] for r in rows].index(t)]['metric']}" for t in tasks],
                  fontsize=8)
    ax.set_ylabel("score (± stderr)")
    ax.set_ylim(0, 1)
    ax.set_title("Benchmarks vs the phi-1.5 paper")
    ax.legend(fontsize=7, loc="upper right")
    if path is not None:
        save_figure(fig, path)
    return fig
