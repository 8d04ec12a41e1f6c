"""Step 6, evaluate: the web filter on each `filter.eval_sets` set -> `eval/<set>.jsonl`
(per document: label, words, each scorer's score) and `eval.json` (phi_lib.filter.evalset).

Runs after keep (its F1 is at the keep threshold as well as at `label_threshold`). The
judge's zero-shot baseline asks the annotator backend, whose request cache makes a rerun
free. Eval sets are web documents: the code path has none.
"""
from __future__ import annotations

import json

import numpy as np

from phi_lib.filter import files, keys
from phi_lib.filter.evalset import HOLDOUT
from phi_lib.provenance import Fingerprint

EVAL_DIR = "eval"
KIND = "web"


def fingerprint(stage, kind: str = KIND) -> Fingerprint:
    return keys.evaluate(stage.cfg, stage.current("train", kind)["classifier"],
                         stage.current("keep", kind)["threshold"])


def eval_docs(stage, name: str, train_texts: list[str]) -> list[dict]:
    from phi_lib.filter.evalset import build_holdout, check_disjoint_texts, read_eval_file

    fc = stage.fc
    if name == HOLDOUT:
        docs = build_holdout(fc, stage.cfg.run.seed, stage.cfg.run.data_dir,
                             list(fc.corpus) + list(fc.reference_corpus if fc.label_source != "llm" else []))
    else:
        docs = read_eval_file(name, stage.cfg.run.data_dir, fc.text_field)
    check_disjoint_texts(name, docs, train_texts)
    return docs


def judge_scores(stage, docs: list[dict], backend) -> np.ndarray:
    """The annotator's label of each document (NaN where it gave none)."""
    from phi_lib.filter.annotate import TOP_LOGPROBS, annotation_record
    from phi_lib.filter.prompts import annotation_prompt

    fc = stage.fc
    completion = fc.judge_format == "completion"
    prompts = [annotation_prompt(d["text"], KIND, fc.annotate_max_chars, fc.rubric, completion)
               for d in docs]
    out = []
    for c, d in zip(backend.generate(prompts, fc.annotation_sampling, chat=not completion,
                                     logprobs=TOP_LOGPROBS), docs):
        label = annotation_record({**d, "id": d["key"], "corpus": ""}, KIND, c,
                                  fc.score_from, rubric=fc.rubric)["label"]
        out.append(np.nan if label is None else label)
    return np.array(out, dtype=np.float64)


def run(stage, kind: str = KIND, backend=None) -> dict:
    from phi_lib.filter.evalset import binary, judge_subset, report
    import shutil

    from phi_lib.io import atomic_write_json

    name, fp = f"evaluate_{kind}", fingerprint(stage, kind)
    if stage.step_current(name, fp):
        return stage.step_stats(name)
    fc, seed = stage.fc, stage.cfg.run.seed
    with stage.timed() as t:
        train_texts = [r["text"] for r in files.read(stage.out, files.ANNOTATIONS, kind)]
        clf = stage.classifier(kind)
        thresholds = {"keep_threshold": stage.threshold(kind), "label_threshold": fc.label_threshold}
        results, metrics, own = {}, {}, backend is None
        shutil.rmtree(stage.out / EVAL_DIR, ignore_errors=True)  # no file of a set no longer named
        try:
            for set_name in fc.eval_sets:
                docs = eval_docs(stage, set_name, train_texts)
                if not docs:
                    raise ValueError(f"filter.eval_sets: {set_name!r} holds no document")
                y = binary([d["label"] for d in docs], fc.label_threshold)
                lengths = np.array([len(d["text"].split()) for d in docs], dtype=np.float64)
                scores = {"classifier": np.asarray(clf.score_texts([d["text"] for d in docs]), np.float64),
                          "length": lengths,
                          "random": np.random.default_rng([int(seed), len(docs)]).random(len(docs))}
                subsets, idx, ok = {}, [], []
                if fc.eval_judge_docs:
                    idx = judge_subset(y, fc.eval_judge_docs, seed)
                    backend = backend or stage.annotator_backend()
                    js = judge_scores(stage, [docs[i] for i in idx], backend)
                    ok = idx[~np.isnan(js)]
                    if len(ok):  # else every reply unscored: counted below, no AUC of nothing
                        full = np.full(len(docs), np.nan)
                        full[idx] = js
                        scores["judge"], subsets["judge"] = full, ok
                rep = report(y, scores, lengths, subsets, thresholds)
                rep["unscored_by_judge"] = int(len(idx) - len(ok))
                results[set_name] = rep
                _write_scores(stage, set_name, docs, y, lengths, scores)
                for scorer, r in rep["scorers"].items():
                    metrics[f"{kind}/eval/{set_name}/{scorer}/roc_auc"] = r["roc_auc"]
                    metrics[f"{kind}/eval/{set_name}/{scorer}/mean_quartile_auc"] = r["mean_quartile_auc"]
                for k, v in rep["f1"].items():
                    metrics[f"{kind}/eval/{set_name}/classifier/f1_at_{k}"] = v
        finally:
            if own and backend is not None:
                backend.close()
        atomic_write_json(stage.out / "eval.json", results)
    counts = {f"{kind}/eval/{n}/docs": r["scorers"]["classifier"]["n"] for n, r in results.items()}
    return stage.record(name, fingerprint=fp, seconds=t["seconds"], counts=counts,
                        metrics=metrics, eval=results)


def _write_scores(stage, set_name, docs, y, lengths, scores) -> None:
    """`eval/<set>.jsonl`: per document its label, words and every scorer's score."""
    from phi_lib.io import atomic_open

    folder = stage.out / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    safe = set_name.replace("/", "_")
    with atomic_open(folder / f"{safe}.jsonl", "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            row = {"key": d["key"], "label": float(d["label"]), "binary": int(y[i]), "words": int(lengths[i]),
                   **{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in scores.items()}}
            f.write(json.dumps(row) + "\n")


def table(stage):
    """Per eval set and scorer: documents, AUC, AUC within length quartiles."""
    import pandas as pd

    s = stage.step_stats(f"evaluate_{KIND}") or {}
    rows = [{"eval_set": n, "scorer": k, **{m: v for m, v in r.items() if m != "quartile_auc"},
             **{f"auc_q{i + 1}": a for i, a in enumerate(r["quartile_auc"])}}
            for n, rep in (s.get("eval") or {}).items() for k, r in rep["scorers"].items()]
    return pd.DataFrame(rows).set_index(["eval_set", "scorer"]) if rows else pd.DataFrame()
