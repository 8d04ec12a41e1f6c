"""The fastText head (DCLM's quality filter): a linear classifier over word and word-bigram
hashes, trained on the text itself (no embedder), at millions of documents per CPU hour.

It learns the binary label `label >= threshold`; its score is 5 x P(educational), on the
judge's 0-5 scale like the embedding heads. One training thread: fastText's multi-threaded
SGD is not reproducible, and a model that changes with the thread count would be a result
that changes with an operational knob.

    clf, report = train_fasttext(texts, labels, threshold=3.0, val_fraction=0.2, seed=0)
    clf.score(["some text"])  # -> [4.7]
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from phi_lib.io import atomic_write_json

MODEL_FILE = "model.bin"
POSITIVE = "__label__1"
_SPACE = re.compile(r"\s+")


@dataclass
class FastTextParams:
    """fastText's training knobs (`filter.fasttext_*`)."""

    word_ngrams: int = 2
    """Word n-gram length (DCLM: bigrams)."""
    dim: int = 32
    """Size of the word vectors."""
    bucket: int = 200_000
    """Hash buckets of the word n-grams (the model is bucket x dim floats)."""
    epoch: int = 20
    """Passes over the labels."""
    lr: float = 0.1
    """Learning rate."""
    seed: int = 0
    """fastText's seed (with one thread, the model is a function of it and the data)."""


def line(text: str) -> str:
    """One document as fastText reads it: lower-cased, whitespace collapsed, no newline."""
    return _SPACE.sub(" ", text.lower()).strip()


class _Model:
    """The sklearn-style `fit(texts, labels)` / `predict(texts)` wrapper of one fastText model."""

    def __init__(self, params: FastTextParams, threshold: float):
        self.params, self.threshold, self.model = params, threshold, None

    def fit(self, texts, labels) -> "_Model":
        import fasttext

        y = np.asarray(labels) >= self.threshold
        fd, path = tempfile.mkstemp(suffix=".txt", prefix="phi-fasttext-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for t, pos in zip(texts, y):
                    f.write(f"{POSITIVE if pos else '__label__0'} {line(t)}\n")
            p = self.params
            self.model = fasttext.train_supervised(
                path, wordNgrams=p.word_ngrams, dim=p.dim, epoch=p.epoch, lr=p.lr, seed=p.seed, bucket=p.bucket,
                thread=1, minCount=1, verbose=0)
        finally:
            os.unlink(path)
        return self

    def predict(self, texts) -> np.ndarray:
        """(n,) 5 x P(educational)."""
        if len(texts) == 0:
            return np.zeros(0, np.float32)
        labels, probs = self.model.predict([line(t) for t in texts], k=-1)
        return np.array([5.0 * dict(zip(ls, ps)).get(POSITIVE, 0.0) for ls, ps in zip(labels, probs)],
                        dtype=np.float32)


class FastTextClassifier:
    """A trained fastText head and its metadata; the same `score` API as EduClassifier."""

    def __init__(self, model: _Model, meta: dict):
        self.model, self.meta = model, meta

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict(list(texts))

    def score(self, texts: Sequence[str]) -> list[float]:
        return [float(s) for s in self.score_texts(texts)]

    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MODEL_FILE}.tmp"
        self.model.model.save_model(str(tmp))
        os.replace(tmp, folder / MODEL_FILE)  # atomic, like phi_lib.io's writers
        atomic_write_json(folder / "classifier.json", self.meta)
        return folder

    @classmethod
    def load(cls, folder) -> "FastTextClassifier":
        import json

        import fasttext

        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not a saved fastText classifier ({MODEL_FILE} is "
                                    f"missing); run stage 02")
        meta = json.loads((folder / "classifier.json").read_text())
        m = _Model(FastTextParams(**meta["fasttext"]), meta["label_threshold"])
        m.model = fasttext.load_model(str(folder / MODEL_FILE))
        return cls(m, meta)


def train_fasttext(texts: Sequence[str], labels, *, threshold: float, val_fraction: float,
                   seed: int, params: Optional[FastTextParams] = None,
                   extra_meta: Optional[dict] = None):
    """Fit on a train split, report on the validation split, refit on all (as the other heads)."""
    from phi_lib.filter.classifier import fit_and_validate, validation_meta

    params = params or FastTextParams(seed=seed)
    X = np.array(list(texts), dtype=object)
    final, report = fit_and_validate(lambda: _Model(params, threshold), X, labels,
                                     threshold=threshold, val_fraction=val_fraction, seed=seed)
    meta = {"head": "fasttext", "embedder": None, "fasttext": vars(params),
            "label_threshold": threshold, "score_scale": "0-5 (5 x P(label >= threshold))",
            "n_labels": int(len(X)), "validation": validation_meta(report),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_meta or {})}
    return FastTextClassifier(final, meta), report
