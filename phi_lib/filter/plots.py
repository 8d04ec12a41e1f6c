"""Figures of stage 02: classifier validation and the corpus score distribution."""
from __future__ import annotations

import numpy as np


def plot_classifier(reports: dict):
    import matplotlib.pyplot as plt

    kinds = list(reports)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(9, 3.6 * len(kinds)), squeeze=False)
    for row, kind in zip(axes, kinds):
        r = reports[kind]
        cm = np.array(r.confusion)
        row[0].imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            row[0].text(j, i, str(v), ha="center", va="center")
        row[0].set_xticks([0, 1], ["pred <thr", "pred >=thr"])
        row[0].set_yticks([0, 1], ["label <thr", "label >=thr"])
        row[0].set_title(f"{kind}: F1 {r.f1:.2f}, AUC {r.roc_auc:.2f} (val n={r.n_val})")
        if r.val_scores:
            row[1].scatter(r.val_labels, r.val_scores, alpha=0.7)
        row[1].axhline(r.threshold, ls="--", c="gray")
        row[1].axvline(r.threshold, ls="--", c="gray")
        row[1].set_xlabel("annotation score (judge)")
        row[1].set_ylabel("classifier score")
        row[1].set_title(f"{kind}: validation predictions")
    return fig


def plot_scores(scores: dict, thresholds: dict, label_threshold: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    for ax, (kind, s) in zip(axes[0], scores.items()):
        ax.hist(s, bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(thresholds[kind], c="tab:red", label=f"keep >= {thresholds[kind]:.2f}")
        ax.axvline(label_threshold, c="gray", ls="--", label=f"label threshold {label_threshold:g}")
        ax.set_xlabel("classifier score (predicted 0-5)")
        ax.set_ylabel("documents")
        ax.set_title(f"{kind}: {len(s)} scored")
        ax.legend(fontsize=8)
    return fig


def plot_eval(results: dict):
    """Per eval set: the classifier's calibration (share of positives per score bin) and each
    scorer's ROC AUC overall and within length quartiles (0.5 = chance)."""
    import matplotlib.pyplot as plt

    names = list(results) or ["(no eval set)"]
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        rep = results.get(name)
        if rep is None:
            row[0].set_title("no eval set configured (filter.eval_sets)")
            continue
        cal = [b for b in rep["calibration"] if b["n"]]
        row[0].plot([0, 5], [0, 1], ls="--", c="gray")
        row[0].plot([b["mean_score"] for b in cal], [b["positive_rate"] for b in cal], "o-")
        for b in cal:
            row[0].annotate(str(b["n"]), (b["mean_score"], b["positive_rate"]), fontsize=7)
        row[0].set_xlabel("classifier score (bin mean)")
        row[0].set_ylabel("share of positives")
        row[0].set_title(f"{name}: calibration")
        scorers = list(rep["scorers"])
        groups = ["all", "q1", "q2", "q3", "q4"]
        width = 0.8 / max(len(scorers), 1)
        for i, sc in enumerate(scorers):
            r = rep["scorers"][sc]
            vals = [r["roc_auc"]] + r["quartile_auc"]
            row[1].bar(np.arange(len(groups)) + i * width, [np.nan if v is None else v for v in vals],
                       width, label=f"{sc} (n={r['n']})")
        row[1].axhline(0.5, c="gray", ls="--")
        row[1].set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
        row[1].set_ylim(0, 1)
        row[1].set_ylabel("ROC AUC")
        row[1].set_title(f"{name}: AUC overall and per length quartile")
        row[1].legend(fontsize=7)
    return fig
