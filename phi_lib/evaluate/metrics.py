"""Metric arithmetic: means with lm-eval's standard error, pass@k, SQuAD exact match."""
from __future__ import annotations

import math
import re
import string
from typing import Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample stddev / sqrt(n)), as lm-eval's `mean_stderr`."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value, the first on ties (numpy's argmax, as lm-eval)."""
    return int(np.argmax(np.asarray(values, dtype=float)))


def normalize_answer(s: str) -> str:
    """SQuAD's official normalisation: lower case, no punctuation/articles/extra spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def parse_number(text: str):
    """The last number in `text` (commas and $ removed), or None."""
    nums = re.findall(r"-?\d[\d,]*\.?\d*", text.replace("$", ""))
    if not nums:
        return None
    try:
        return float(nums[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None
