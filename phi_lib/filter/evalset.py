"""How good is the filter: labelled eval sets, the classifier's metrics on them, and the
baselines a quality filter must beat.

An eval set is a list of {key, text, label} (label 0/1, or 0-5 read as `label >=
label_threshold`). `holdout` is built from the data folder: passages of
`eval_positive_corpus` (other books, by another generator, than the reference corpus) as
positives and pages of `eval_negative_corpus` (other crawls than the filtered corpus) as
negatives, both through the web heuristics the candidates passed. It is kept out of training
by construction (no eval corpus overlaps a training corpus: `check_disjoint_specs`) and by
content (no eval text is a training text: `check_disjoint_texts`).

Every scorer is reported on the same documents with ROC AUC overall and within length
quartiles (human quality labels are length-confounded: a filter that learned length only
ranks at chance within a quartile):

    classifier  the stage's classifier (its F1 at the keep and at the label threshold too)
    length      the word count
    judge       the annotator's zero-shot score (on a class-balanced subset)
    random      a seeded uniform score
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Optional

import numpy as np

HOLDOUT = "holdout"
N_QUARTILES = 4
CALIBRATION_BINS = 5


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def binary(labels, threshold: float) -> np.ndarray:
    """0/1 labels as they are; 0-5 labels at `threshold`."""
    y = np.asarray(labels, dtype=np.float64)
    return y.astype(int) if set(np.unique(y)) <= {0.0, 1.0} else (y >= threshold).astype(int)


# ----------------------------------------------------------------------------- building
def _under(a: Path, b: Path) -> bool:
    return a == b or b in a.parents or a in b.parents


def check_disjoint_specs(eval_specs: list[str], train_specs: list[str], data_dir) -> None:
    """No eval corpus is, holds or lies in a training corpus (else raises, naming both)."""
    from phi_lib.corpora import STDLIB, resolve_corpus

    train = {s: resolve_corpus(s, data_dir) for s in train_specs if s != STDLIB}
    for e in eval_specs:
        pe = resolve_corpus(e, data_dir)
        for s, pt in train.items():
            if _under(pe, pt):
                raise ValueError(f"filter.eval_sets: the holdout corpus {e!r} overlaps the training "
                                 f"corpus {s!r}: the eval set must not share documents with training")


def check_disjoint_texts(name: str, eval_docs: list[dict], train_texts) -> None:
    """Raises if an eval document's text is a training text (normalised whitespace)."""
    train = {text_hash(t) for t in train_texts}
    shared = [d["key"] for d in eval_docs if text_hash(d["text"]) in train]
    if shared:
        raise ValueError(f"eval set {name!r}: {len(shared)} documents are training texts "
                         f"(first: {shared[:3]})")


def build_holdout(fc, seed, data_dir, train_specs: list[str], stats=None) -> list[dict]:
    """`eval_per_class` positives and negatives (seeded samples), label 1 and 0."""
    from phi_lib.filter.heuristics import web_blocks
    from phi_lib.filter.reference import sample_passages

    check_disjoint_specs(fc.eval_positive_corpus + fc.eval_negative_corpus, train_specs, data_dir)
    out = []
    for label, specs in ((1, fc.eval_positive_corpus), (0, fc.eval_negative_corpus)):
        docs = sample_passages(specs, fc.eval_per_class, f"{seed}-eval-{label}", web_blocks(fc),
                               data_dir, stats, fc.text_field)
        out += [{"key": f"{HOLDOUT}:{d['corpus']}/{d['id']}", "text": d["text"], "label": label}
                for d in docs]
    return out


def read_eval_file(spec: str, data_dir, text_field: str, stats=None) -> list[dict]:
    """A labelled file or folder (`text`, `label`); a record without a numeric label raises."""
    from phi_lib.corpora import iter_documents

    out = []
    for d in iter_documents(spec, text_field=text_field, stats=stats, data_dir=data_dir, code=False):
        label = d.get("label")
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise ValueError(f"filter.eval_sets: {spec}: record {d['id']!r} has no numeric "
                             f"`label` (got {label!r})")
        out.append({"key": f"{spec}:{d['corpus']}/{d['id']}", "text": d["text"], "label": float(label)})
    return out


def judge_subset(labels: np.ndarray, n: int, seed) -> np.ndarray:
    """Indices of a seeded subset of about `n`, half from each class (all if fewer)."""
    rng = random.Random(f"{seed}-eval-judge")
    chosen = []
    for c in (0, 1):
        idx = [int(i) for i in np.flatnonzero(labels == c)]
        rng.shuffle(idx)
        chosen += idx[: (n + 1 - c) // 2]
    return np.array(sorted(chosen), dtype=int)


# ----------------------------------------------------------------------------- metrics
def auc(y: np.ndarray, s: np.ndarray) -> Optional[float]:
    """ROC AUC, None where one class is missing (reported as such, never NaN-silently)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None


def quartile_aucs(y: np.ndarray, s: np.ndarray, lengths: np.ndarray) -> list[Optional[float]]:
    """AUC within each length quartile (edges from all documents' lengths)."""
    edges = np.quantile(lengths, np.linspace(0, 1, N_QUARTILES + 1)[1:-1])
    q = np.searchsorted(edges, lengths, side="right")
    return [auc(y[q == i], s[q == i]) for i in range(N_QUARTILES)]


def f1_at(y: np.ndarray, s: np.ndarray, threshold: float) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, (s >= threshold).astype(int), zero_division=0))


def calibration(y: np.ndarray, s: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per score bin on the 0-5 scale: documents, mean score, share of positives."""
    edges = np.linspace(0, 5, bins + 1)
    b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int((b == i).sum()),
             "mean_score": float(s[b == i].mean()) if (b == i).any() else None,
             "positive_rate": float(y[b == i].mean()) if (b == i).any() else None}
            for i in range(bins)]


def scorer_report(y: np.ndarray, s: np.ndarray, lengths: np.ndarray) -> dict:
    qs = quartile_aucs(y, s, lengths)
    defined = [a for a in qs if a is not None]
    return {"n": int(len(y)), "positives": int(y.sum()), "roc_auc": auc(y, s),
            "quartile_auc": qs, "mean_quartile_auc": float(np.mean(defined)) if defined else None}


def report(y: np.ndarray, scores: dict[str, np.ndarray], lengths: np.ndarray,
           subsets: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict:
    """Every scorer on its documents (`subsets[name]`: indices, default all); the classifier
    also on each subset, so each baseline has a classifier number on the same documents."""
    out: dict = {"scorers": {}, "classifier_on": {}}
    everything = np.arange(len(y))
    for name, s in scores.items():
        idx = subsets.get(name, everything)
        out["scorers"][name] = scorer_report(y[idx], s[idx], lengths[idx])
        if name != "classifier" and len(idx) != len(y):
            c = scores["classifier"]
            out["classifier_on"][name] = scorer_report(y[idx], c[idx], lengths[idx])
    c = scores["classifier"]
    out["f1"] = {k: f1_at(y, c, t) for k, t in thresholds.items()}
    out["calibration"] = calibration(y, c)
    return out
