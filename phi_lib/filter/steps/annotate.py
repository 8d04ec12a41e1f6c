"""Step 2, annotate: the LLM judge labels a seeded sample of each path's candidates ->
`annotations/<kind>/`, and every path's current annotations -> `annotations.jsonl`.

An annotation is valid for its document's text and its judge (the annotator fingerprint,
phi_lib.filter.keys.annotator): a new model, rubric, prompt format, label source or judge
sampling relabels every sample; a sample that left (a smaller `n_annotate`) is removed.
A backend error (status `error`) is not a result: it is counted, and asked again the next
time the step runs (the step does not count as done while one remains).

With `label_source` `reference` or `union` (web), the reference passages join the sample as
positives (phi_lib.filter.reference); with `reference` the web sample is labelled 0 and the
judge is not asked at all.
"""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np

from phi_lib.filter import files, keys
from phi_lib.filter.reservoir import reservoir
from phi_lib.provenance import Fingerprint

LABEL_FIELDS = ("key", "text", "label")
"""What the classifier learns from: the digest of these is the training data's identity."""


def fingerprint(stage, kind: str) -> Fingerprint:
    return keys.annotate(stage.cfg, kind, stage.current("prefilter", kind)["output_digest"])[0]


def sample(stage, kind: str) -> list[dict]:
    """A seeded uniform sample of `n_annotate` candidates of the pool (the first
    `annotate_pool_docs` documents of each corpus); reservoir: one streaming pass."""
    n, pool = stage.fc.n_annotate, keys.pool_docs(stage.fc)
    docs = (doc for doc in files.read(stage.out, files.CANDIDATES, kind)
            if pool is None or doc["pos"] < pool)
    chosen = reservoir(docs, n, random.Random(f"{stage.cfg.run.seed}-annotate-{kind}"))
    return sorted(chosen, key=lambda d: d["key"])


def label_source(stage, kind: str) -> str:
    return stage.fc.label_source if kind == "web" else "llm"


def reference_set(stage, kind: str, docs: list[dict]) -> dict[str, dict]:
    """Key -> fixed-label record: reference positives, and in `reference` mode the web
    sample as negatives (empty for `llm`)."""
    from phi_lib.filter.heuristics import web_blocks
    from phi_lib.filter.reference import REFERENCE_LABEL, WEB_LABEL, reference_records, sample_passages

    source = label_source(stage, kind)
    if source == "llm":
        return {}
    fc = stage.fc
    pos = sample_passages(fc.reference_corpus, fc.n_reference, stage.cfg.run.seed, web_blocks(fc),
                          stage.cfg.run.data_dir, text_field=fc.text_field)
    recs = list(reference_records(pos, REFERENCE_LABEL, REFERENCE))
    if source == "reference":
        recs += reference_records(docs, WEB_LABEL, REFERENCE)
    return {r["key"]: r for r in recs}


REFERENCE = "reference"
"""`status` and `annotator` of a fixed-label record (reference positive or web negative)."""


def run(stage, kind: str, backend=None) -> dict:
    """Annotate what is missing with `backend` (made from `filter.annotator` when needed)."""
    from phi_lib.filter.annotate import annotate

    name = f"annotate_{kind}"
    fp, judge = keys.annotate(stage.cfg, kind, stage.current("prefilter", kind)["output_digest"])
    if stage.step_current(name, fp) and not stage.step_stats(name)["errors"]:
        return stage.step_stats(name)
    with stage.timed() as t:
        docs = sample(stage, kind)
        fixed = reference_set(stage, kind, docs)
        ask_judge = label_source(stage, kind) != "reference"
        texts = {d["key"]: d["text"] for d in docs} if ask_judge else {}

        def current(r) -> bool:
            if r.get("annotator") == REFERENCE:
                return fixed.get(r["key"]) == r
            return (r.get("annotator") == judge.key and texts.get(r["key"]) == r["text"]
                    and r["status"] != "error")

        stale = files.prune(stage.out, files.ANNOTATIONS, kind, shard_size=1000, keep=current)
        w = files.writer(stage.out, files.ANNOTATIONS, kind, 1000)
        for key, rec in fixed.items():
            if not w.has(key):
                w.write(rec)
        todo = [d for d in docs if ask_judge and not w.has(d["key"])]
        if todo:
            own = backend is None
            backend = backend or stage.annotator_backend()
            try:
                annotate(todo, kind, backend, stage.fc, w, stage.progress, annotator=judge.key)
            finally:
                if own:
                    backend.close()
        w.close()
        recs = sorted(files.read(stage.out, files.ANNOTATIONS, kind),
                      key=lambda r: r["key"])
        write_all(stage)
    return stage.record(name, fingerprint=fp, counts=counts(kind, recs),
                        metrics=metrics(kind, recs, stage.fc.label_threshold),
                        seconds=t["seconds"], annotator=judge.to_dict(), asked=len(todo),
                        stale_removed=stale, errors=sum(r["status"] == "error" for r in recs), output_digest=files.digest_of(recs, LABEL_FIELDS))


def write_all(stage) -> None:
    """`annotations.jsonl`: every configured path's annotations, one file for people."""
    from phi_lib.io import atomic_open

    with atomic_open(stage.out / "annotations.jsonl", "w", encoding="utf-8") as f:
        for kind in stage.kinds():
            for r in sorted(files.read(stage.out, files.ANNOTATIONS, kind), key=lambda r: r["key"]):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def counts(kind: str, recs: list[dict]) -> dict:
    st = Counter(r["status"] for r in recs)
    labelled = sum(r["label"] is not None for r in recs)
    return {f"{kind}/annotations/annotated": len(recs), f"{kind}/annotations/labelled": labelled,
            f"{kind}/annotations/no_label": len(recs) - labelled,
            **{f"{kind}/annotations/status_{s}": n for s, n in sorted(st.items())}}


def metrics(kind: str, recs: list[dict], label_threshold: float) -> dict:
    """Mean label, educational share, agreement of the written and the log-prob score."""
    labels = [r["label"] for r in recs if r["label"] is not None]
    both = np.array([(r["score_text"], r["score_logprobs"]) for r in recs
                     if r["score_text"] is not None and r["score_logprobs"] is not None])
    corr = float(np.corrcoef(both.T)[0, 1]) if len(both) > 2 and both.std(0).min() > 0 else float("nan")
    return {f"{kind}/mean_label": float(np.mean(labels)) if labels else float("nan"),
            f"{kind}/educational_share": float(np.mean([x >= label_threshold for x in labels]))
            if labels else float("nan"),
            f"{kind}/text_vs_logprob_corr": corr}


def table(stage):
    """Per path: replies by parse status, labels, mean label, text/log-prob agreement."""
    import pandas as pd

    rows = []
    for kind in stage.kinds():
        s = stage.step_stats(f"annotate_{kind}") or {}
        row = {"kind": kind}
        row.update({k.split("/")[-1]: v for k, v in (s.get("counts") or {}).items()})
        row.update({k.split("/")[-1]: v for k, v in (s.get("metrics") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("kind").fillna(0)
