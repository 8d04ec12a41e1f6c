"""Stage 02's filter on its eval sets, per head: docs/s of scoring the candidates and the
eval-set AUC (overall and within length quartiles) beside the baselines.

    python perf/filter_quality.py --out /tmp/fq --set filter.max_docs=300 --heads fasttext random_forest

Each head runs the stage's steps in its own folder of `--out` (the embedding cache is
shared by copying nothing: each run embeds afresh, so docs/s includes embedding).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import yaml


def main() -> None:
    from phi_lib.config import load
    from phi_lib.filter import FilterStage

    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/smoke.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heads", nargs="+", default=["fasttext", "random_forest"])
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides (YAML values)")
    a = ap.parse_args()
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows = []
    for head in a.heads:
        cfg = load(a.params, {"run.output_root": os.path.join(a.out, head), "filter.code_corpus": None,
                              **over, "filter.classifier": head})
        stage = FilterStage(cfg, cfg.run_dir / "02_filter_web", progress=False)
        t = {}
        for step in ("prefilter", "annotate", "train", "score", "keep", "evaluate"):
            t0 = time.perf_counter()
            getattr(stage, step)()
            t[step] = time.perf_counter() - t0
        n = stage.current("score", "web")["counts"]["web/scored"]
        ev = stage.current("evaluate", "web")["eval"]
        rows.append({"head": head, "scored": n, "score_s": round(t["score"], 2),
                     "docs_per_s": round(n / t["score"], 1), "train_s": round(t["train"], 2),
                     "eval": {name: {k: {"auc": r["roc_auc"], "mean_quartile_auc": r["mean_quartile_auc"],
                                         "quartile_auc": r["quartile_auc"], "n": r["n"]}
                                     for k, r in rep["scorers"].items()} | {"f1": rep["f1"]}
                              for name, rep in ev.items()}})
        print(json.dumps(rows[-1], indent=1), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
