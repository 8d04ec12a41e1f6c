"""The small judge's prompt styles compared on stage 02's holdout eval set: the short 0-5
rubric (expected score over the digit tokens) vs the yes/no "educational for a student"
question (5 x P(Yes)), both in completion format, scored by log-probabilities.

    python perf/filter_judge_prompts.py --per-class 20 [--set filter.annotator.model=...]

Prints per style: ROC AUC, AUC within length quartiles, how many replies gave no score, and
seconds; the numbers in docs/FILTER_QUALITY.md come from here.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import yaml


def main() -> None:
    from phi_lib.backends import get_backend
    from phi_lib.config import load
    from phi_lib.filter.annotate import TOP_LOGPROBS, annotation_record
    from phi_lib.filter.evalset import binary, build_holdout, scorer_report
    from phi_lib.filter.prompts import annotation_prompt

    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/smoke.yaml")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--styles", nargs="+", default=["short", "yesno"])
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = load(a.params, {**over, "filter.eval_per_class": a.per_class})
    fc = cfg.filter
    docs = build_holdout(fc, cfg.run.seed, cfg.run.data_dir, list(fc.corpus) + list(fc.reference_corpus))
    y = binary([d["label"] for d in docs], fc.label_threshold)
    lengths = np.array([len(d["text"].split()) for d in docs], dtype=float)
    backend = get_backend(fc.annotator, run_dir=cfg.run_dir, data_dir=cfg.run.data_dir)
    rows = []
    for style in a.styles:
        t0 = time.perf_counter()
        prompts = [annotation_prompt(d["text"], "web", fc.annotate_max_chars, style, True) for d in docs]
        comps = backend.generate(prompts, fc.annotation_sampling, chat=False, logprobs=TOP_LOGPROBS)
        recs = [annotation_record({**d, "id": d["key"], "corpus": ""}, "web", c, "logprobs", rubric=style)
                for d, c in zip(docs, comps)]
        s = np.array([np.nan if r["label"] is None else r["label"] for r in recs])
        ok = ~np.isnan(s)
        rep = scorer_report(y[ok], s[ok], lengths[ok])
        rows.append({"style": style, "seconds": round(time.perf_counter() - t0, 1),
                     "no_score": int((~ok).sum()), "score_range": [float(np.nanmin(s)), float(np.nanmax(s))],
                     **rep})
        print(json.dumps(rows[-1]), flush=True)
    backend.close()
    rep = scorer_report(y, lengths, lengths)
    print(json.dumps({"style": "length baseline", **rep}))


if __name__ == "__main__":
    main()
