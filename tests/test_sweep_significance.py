"""Seeds and significance on constructed results: the paired bootstrap calls a known difference
significant and no difference not (at about its nominal rate over many replications), its
interval agrees with scipy's bootstrap on the one-seed case, and seed aggregation is the mean
and standard error of the seeds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from phi_lib.evaluate.significance import (in_words, item_matrix, paired_difference,
                                           seed_summary)

pytestmark = pytest.mark.unit


def _variant(rng, p_item, seeds=2, flip=0.1):
    """(seeds, items) 0/1 scores: each item right with its own probability; a seed flips a
    few items (seed noise)."""
    base = rng.random((1, len(p_item))) < p_item
    noise = rng.random((seeds, len(p_item))) < flip
    return (base ^ noise).astype(float)


def test_known_difference_is_significant_and_none_is_not():
    rng = np.random.default_rng(0)
    difficulty = rng.random(300)  # shared items: what pairing cancels
    calls_real, calls_null = [], []
    for _ in range(30):
        good = _variant(rng, np.clip(difficulty + 0.2, 0, 1))
        same_a, same_b = _variant(rng, difficulty), _variant(rng, difficulty)
        base = _variant(rng, difficulty)
        calls_real.append(paired_difference(good, base, n_boot=400)["significant"])
        calls_null.append(paired_difference(same_a, same_b, n_boot=400)["significant"])
    assert np.mean(calls_real) >= 0.95  # +~0.16 on 300 items: found nearly always
    assert np.mean(calls_null) <= 0.15  # nominal 5%: no systematic false alarms
    res = paired_difference(good, base)
    assert res["significant"] and res["lo"] > 0 and "better" in in_words("a", "b", "t/acc", res)
    flat = paired_difference(same_a, same_a)
    assert not flat["significant"] and "within noise" in in_words("a", "b", "t/acc", flat)
    with pytest.raises(ValueError, match="same items"):
        paired_difference(good, base[:, :10])


def test_one_seed_interval_matches_scipy_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    a, b = (rng.random((1, 300)) < 0.6).astype(float), (rng.random((1, 300)) < 0.5).astype(float)
    ours = paired_difference(a, b, n_boot=6000)
    ref = bootstrap(((a - b)[0],), np.mean, n_resamples=6000, method="percentile",
                    confidence_level=0.95, random_state=2).confidence_interval
    assert ours["diff"] == pytest.approx(float((a - b).mean()))
    assert ours["lo"] == pytest.approx(ref.low, abs=0.01)
    assert ours["hi"] == pytest.approx(ref.high, abs=0.01)


def test_seed_noise_widens_the_interval():
    """Pooling seeds: two seeds that disagree make the interval wider than either seed's."""
    rng = np.random.default_rng(3)
    a = (rng.random((2, 300)) < 0.55).astype(float)
    b = (rng.random((1, 300)) < 0.5).astype(float)
    a[1] = (rng.random(300) < 0.75)  # a second seed far from the first
    pooled = paired_difference(a, b)
    single = paired_difference(a[:1], b)
    assert pooled["hi"] - pooled["lo"] > single["hi"] - single["lo"]
    assert pooled["n_seeds"] == [2, 1]


def test_seed_summary_and_item_matrix(tmp_path):
    m, se, n = seed_summary([0.5, 0.7, 0.6])
    assert (m, n) == (pytest.approx(0.6), 3) and se == pytest.approx(np.std([.5, .7, .6], ddof=1)
                                                                     / np.sqrt(3))
    assert seed_summary([0.4])[2] == 1 and np.isnan(seed_summary([0.4])[1])
    dirs = []
    for s, accs in enumerate([[1, 0, 1], [0, 0, 1, 1]]):  # the second run scored one more item
        d = tmp_path / f"s{s}"
        (d / "samples").mkdir(parents=True)
        (d / "samples" / "piqa.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "acc": float(v)}) + "\n" for i, v in enumerate(accs)))
        dirs.append(d)
    assert item_matrix(dirs, "piqa", "acc").tolist() == [[1, 0, 1], [0, 0, 1]]
    assert item_matrix(dirs, "piqa", "acc_norm") is None and item_matrix(dirs, "boolq", "acc") is None
