"""Step 5, keep: the candidates scoring at least the threshold -> `kept/` (web) and
`kept_code/` (code) shards for stage 03, with `kept*.json` (threshold and counts).

The threshold is `keep_threshold`, else the score that keeps the top `keep_fraction`. The
shards are rewritten whole whenever the scores, the candidates or the threshold knobs
changed, in candidate order, so a resumed run writes the same bytes as a fresh one.
"""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np

from phi_lib.filter import files, keys
from phi_lib.filter.steps import score as score_step
from phi_lib.provenance import Fingerprint

KEPT_FIELDS = ("id", "text", "source", "corpus", "score", "key")


def fingerprint(stage, kind: str) -> Fingerprint:
    return keys.keep(stage.cfg, stage.current("score", kind)["output_digest"],
                     stage.current("prefilter", kind)["output_digest"])


def threshold(fc, scores) -> float:
    """`keep_threshold`, else the score that keeps the top `keep_fraction`."""
    if fc.keep_threshold is not None:
        return float(fc.keep_threshold)
    s = np.fromiter(scores, dtype=np.float64)
    if len(s) == 0 or fc.keep_fraction <= 0:
        return float("inf")
    return float(np.quantile(s, 1.0 - fc.keep_fraction, method="higher"))


def run(stage, kind: str) -> dict:
    from phi_lib.io import ShardedJsonlWriter, atomic_write_json

    name, fp = f"keep_{kind}", fingerprint(stage, kind)
    final = stage.out / files.KEPT_DIR[kind]
    if stage.step_current(name, fp) and final.is_dir():
        return stage.step_stats(name)
    with stage.timed() as t:
        scores = score_step.scores(stage, kind)
        thr = threshold(stage.fc, scores.values())
        tmp = stage.out / f".{files.KEPT_DIR[kind]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        kept: Counter = Counter()
        with ShardedJsonlWriter(tmp, "shard", stage.fc.shard_size, key_field="key") as w:
            for doc in files.read(stage.out, files.CANDIDATES, kind):
                s = scores[doc["key"]]  # every candidate is scored (the score step is current)
                if s >= thr:
                    kept[doc["corpus"]] += 1
                    w.write({**{k: doc[k] for k in KEPT_FIELDS if k != "score"}, "score": s})
        files.swap(tmp, final)
        atomic_write_json(stage.out / f"{files.KEPT_DIR[kind]}.json",
                          {"threshold": thr, "kept": dict(kept),
                           "classifier": stage.current("train", kind)["classifier"]})
    read = (stage.current("prefilter", kind).get("per_corpus") or {})
    n_read = sum(c.get("read", 0) for c in read.values())
    counts = {f"{kind}/kept": sum(kept.values()),
              **{f"{kind}/{corpus}/kept": kept.get(corpus, 0) for corpus in read}}
    return stage.record(name, fingerprint=fp, seconds=t["seconds"], counts=counts,
                        metrics={f"{kind}/threshold": thr,
                                 f"{kind}/kept_fraction": sum(kept.values()) / max(n_read, 1)},
                        threshold=thr, kept=dict(kept))


def table(stage):
    """Per corpus: read, pre-filter survivors, scored, kept and the kept fraction."""
    import pandas as pd

    rows = []
    for kind in stage.kinds():
        pre = stage.step_stats(f"prefilter_{kind}") or {}
        kept = stage.step_stats(f"keep_{kind}") or {}
        scores = score_step.scores(stage, kind)
        scored = Counter(d["corpus"] for d in files.read(stage.out, files.CANDIDATES, kind)
                         if d["key"] in scores)
        for corpus, c in (pre.get("per_corpus") or {}).items():
            k = (kept.get("kept") or {}).get(corpus, 0)
            rows.append({"kind": kind, "corpus": corpus, "read": c.get("read", 0),
                         "after_prefilter": c.get("candidates", 0), "scored": scored[corpus],
                         "kept": k, "kept_fraction": k / max(c.get("read", 0), 1),
                         "threshold": kept.get("threshold")})
    return pd.DataFrame(rows).set_index(["kind", "corpus"])
