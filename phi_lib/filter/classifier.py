"""The educational-value classifier: a head on document embeddings, or fastText on the text.

The embedding heads regress the 0-5 label: a random forest (phi-1's choice of model) or a
ridge linear head (FineWeb-Edu's regression head). The fastText head (DCLM's filter: word
bigrams, no embedder) is a binary classifier of `label >= label_threshold`; its score is
5 x P(educational), so all three read on the judge's 0-5 scale. The score of a document is
the predicted score, so higher = more educational and thresholds read on the judge's scale;
F1, ROC AUC and the confusion matrix are computed on the binary decision at
`label_threshold` (FineWeb-Edu's "score >= 3"), on a held-out validation split.

    from phi_lib.filter import load_classifier
    clf = load_classifier("outputs/smoke/02_filter_web/classifier")
    clf.score(["some text", ...])  # -> list[float]
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from phi_lib.io import atomic_open, atomic_write_json


def make_head(kind: str, seed: int = 0, n_estimators: int = 300):
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=2,
                                     n_jobs=-1, random_state=seed)
    if kind == "ridge":
        from sklearn.linear_model import RidgeCV

        return RidgeCV(alphas=np.logspace(-3, 3, 13))
    raise ValueError(f"filter.classifier: unknown head {kind!r} (known: random_forest, ridge, fasttext)")


HEADS = ("random_forest", "ridge", "fasttext")
"""`filter.classifier` values; `fasttext` reads text, the others embeddings."""


@dataclass
class ClassifierReport:
    """Validation metrics of a trained classifier (binary at `threshold`)."""

    n_train: int
    n_val: int
    threshold: float
    f1: float
    roc_auc: float
    precision: float
    recall: float
    mse: float
    confusion: list[list[int]]
    """[[tn, fp], [fn, tp]] on the validation split."""
    positive_rate: float
    val_scores: list[float] = field(default_factory=list)
    val_labels: list[float] = field(default_factory=list)

    @classmethod
    def from_meta(cls, meta: dict) -> "ClassifierReport":
        """The report saved in a classifier's `classifier.json` (a fresh kernel's view)."""
        v = meta["validation"]
        return cls(n_train=v["n_train"], n_val=v["n_val"], threshold=meta["label_threshold"],
                   f1=v["f1"], roc_auc=v["roc_auc"], precision=v["precision"], recall=v["recall"],
                   mse=v["val_mse"], confusion=v["confusion"], positive_rate=v["positive_rate"],
                   val_scores=v.get("scores", []), val_labels=v.get("labels", []))

    def metrics(self) -> dict[str, float]:
        return {"f1": self.f1, "roc_auc": self.roc_auc, "precision": self.precision,
                "recall": self.recall, "val_mse": self.mse, "positive_rate": self.positive_rate,
                "n_train": self.n_train, "n_val": self.n_val}


def evaluate_scores(scores: np.ndarray, labels: np.ndarray, threshold: float,
                    n_train: int = 0) -> ClassifierReport:
    """Binary metrics of predicted scores against annotation scores (NaN where undefined)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    y = (labels >= threshold).astype(int)
    pred = (scores >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    auc = float(roc_auc_score(y, scores)) if both else float("nan")
    cm = confusion_matrix(y, pred, labels=[0, 1]).tolist() if len(y) else [[0, 0], [0, 0]]
    kw = dict(zero_division=0)
    return ClassifierReport(
        n_train=n_train, n_val=len(y), threshold=threshold,
        f1=float(f1_score(y, pred, **kw)) if len(y) else float("nan"), roc_auc=auc,
        precision=float(precision_score(y, pred, **kw)) if len(y) else float("nan"),
        recall=float(recall_score(y, pred, **kw)) if len(y) else float("nan"),
        mse=float(np.mean((scores - labels) ** 2)) if len(y) else float("nan"),
        confusion=cm, positive_rate=float(y.mean()) if len(y) else float("nan"),
        val_scores=[float(s) for s in scores], val_labels=[float(v) for v in labels])


def split_train_val(n: int, val_fraction: float, seed: int, labels: Optional[np.ndarray] = None,
                    threshold: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays; stratified on the binary label when both classes have 2+ samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    n_val = int(round(n * val_fraction))
    if n_val == 0 or n - n_val < 2:
        return idx, idx[:0]
    strat = None
    if labels is not None:
        y = (labels >= threshold).astype(int)
        if min(np.bincount(y, minlength=2)) >= 2:
            strat = y
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)


class EduClassifier:
    """An embedder name plus a fitted sklearn head; `score(texts)` embeds then predicts."""

    def __init__(self, head, meta: dict, embedder=None):
        self.head, self.meta, self._embedder = head, meta, embedder

    @property
    def embedder(self):
        if self._embedder is None:
            from phi_lib.embed import get_embedder

            self._embedder = get_embedder(self.meta["embedder"],
                                          max_tokens=self.meta.get("embed_max_tokens", 256))
        return self._embedder

    def score_embeddings(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.head.predict(X), dtype=np.float32)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) scores on the 0-5 judge scale; higher = more educational."""
        return self.score_embeddings(self.embedder.embed(list(texts)))

    def score(self, texts: Sequence[str]) -> list[float]:
        return [float(s) for s in self.score_texts(texts)]

    def save(self, folder) -> Path:
        import joblib

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / "head.joblib", "wb") as f:
            joblib.dump(self.head, f)
        atomic_write_json(folder / "classifier.json", self.meta)
        return folder


def fit_and_validate(make, X, labels: np.ndarray, *, threshold: float, val_fraction: float,
                     seed: int):
    """Fit `make()` on a train split, report on the validation split, refit on everything.
    `X` is anything indexable by an index array (embeddings, or a numpy array of texts)."""
    labels = np.asarray(labels, dtype=np.float32)
    if len(labels) < 2:
        raise ValueError(f"need at least 2 labelled samples to train a classifier, got {len(labels)}")
    tr, va = split_train_val(len(labels), val_fraction, seed, labels, threshold)
    head = make().fit(X[tr], labels[tr])
    report = evaluate_scores(np.asarray(head.predict(X[va]), dtype=np.float32) if len(va) else
                             np.zeros(0, np.float32), labels[va], threshold, n_train=len(tr))
    return make().fit(X, labels), report  # validation measured; now use all


def train_classifier(X: np.ndarray, labels: np.ndarray, *, kind: str, threshold: float,
                     val_fraction: float, seed: int, embedder_name: str, embed_max_tokens: int = 256,
                     n_estimators: int = 300, extra_meta: Optional[dict] = None,
                     embedder=None) -> tuple[EduClassifier, ClassifierReport]:
    """Fit the head on a train split, report on the validation split, refit on everything."""
    labels = np.asarray(labels, dtype=np.float32)
    final, report = fit_and_validate(lambda: make_head(kind, seed, n_estimators), X, labels,
                                     threshold=threshold, val_fraction=val_fraction, seed=seed)
    meta = {"head": kind, "embedder": embedder_name, "embed_max_tokens": embed_max_tokens,
            "embedding_dim": int(X.shape[1]), "label_threshold": threshold,
            "score_scale": "0-5 (predicted annotation score)", "n_labels": int(len(labels)),
            "validation": validation_meta(report),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_meta or {})}
    return EduClassifier(final, meta, embedder), report


def validation_meta(report: ClassifierReport) -> dict:
    return report.metrics() | {"confusion": report.confusion, "scores": report.val_scores,
                               "labels": report.val_labels}


def load_classifier(folder, embedder=None):
    """A classifier saved by stage 02 (`02_filter_web/classifier/`): an EduClassifier, or a
    FastTextClassifier (`head: fasttext`); both have `score(texts)` and `score_texts`."""
    import joblib

    folder = Path(folder)
    meta_file = folder / "classifier.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("head") == "fasttext":
        from phi_lib.filter.fasttext_head import FastTextClassifier

        return FastTextClassifier.load(folder)
    head_file = folder / "head.joblib"
    for f in (meta_file, head_file):
        if not f.is_file():
            raise FileNotFoundError(f"{folder}: not a saved classifier ({f.name} is missing); "
                                    f"run stage 02 (`python -m phi_lib run <params> --stages 02`)")
    meta = json.loads(meta_file.read_text())
    return EduClassifier(joblib.load(head_file), meta, embedder)
