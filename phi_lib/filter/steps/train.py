"""Step 3, train: embed the labelled samples (fastText reads the text), fit the head,
validate -> `classifier*/`.

The saved classifier carries the fingerprint of its training inputs (phi_lib.filter.keys
.classifier: head knobs, embedder identity, annotations digest); the scores it gives carry
that fingerprint's key. Validation knobs (`label_threshold`, `val_fraction`) retrain and
re-report, but the head they refit on all labels is the same, so nothing is rescored.
"""
from __future__ import annotations

from collections import Counter

from phi_lib.filter import files, keys
from phi_lib.provenance import Fingerprint


def fingerprint(stage, kind: str) -> Fingerprint:
    return keys.train(stage.cfg, kind, stage.current("annotate", kind)["output_digest"])[0]


def run(stage, kind: str) -> dict:
    import numpy as np

    from phi_lib.filter.classifier import train_classifier

    name, fc = f"train_{kind}", stage.fc
    ann = stage.current("annotate", kind)
    fp, clf_fp = keys.train(stage.cfg, kind, ann["output_digest"])
    if stage.step_current(name, fp):
        return stage.step_stats(name)
    with stage.timed() as t:
        recs = list(files.read(stage.out, files.ANNOTATIONS, kind))
        labelled = sorted((r for r in recs if r["label"] is not None), key=lambda r: r["key"])
        if len(labelled) < 2:
            raise ValueError(f"filter: only {len(labelled)} of the {kind} annotations carry a score "
                             f"(statuses: {dict(Counter(r['status'] for r in recs))}); "
                             f"raise filter.n_annotate or use a stronger filter.annotator")
        y = np.array([r["label"] for r in labelled], dtype=np.float32)
        meta = {"kind": kind, "fingerprint": clf_fp.to_dict()}
        if fc.classifier == "fasttext":
            from phi_lib.filter.fasttext_head import FastTextParams, train_fasttext

            params = FastTextParams(word_ngrams=fc.fasttext_word_ngrams, dim=fc.fasttext_dim,
                                    epoch=fc.fasttext_epoch, lr=fc.fasttext_lr, bucket=fc.fasttext_bucket,
                                    seed=stage.cfg.run.seed)
            clf, report = train_fasttext([r["text"] for r in labelled], y, threshold=fc.label_threshold,
                                         val_fraction=fc.val_fraction, seed=stage.cfg.run.seed,
                                         params=params, extra_meta=meta)
        else:
            X = stage.embedder.embed([r["text"] for r in labelled])
            clf, report = train_classifier(
                X, y, kind=fc.classifier, threshold=fc.label_threshold, val_fraction=fc.val_fraction,
                seed=stage.cfg.run.seed, embedder_name=fc.embedder, embed_max_tokens=fc.embed_max_tokens,
                n_estimators=fc.n_estimators, embedder=stage.embedder, extra_meta=meta)
        clf.save(stage.out / files.CLASSIFIER_DIR[kind])
    return stage.record(name, fingerprint=fp, seconds=t["seconds"],
                        metrics={f"{kind}/{k}": float(v) for k, v in report.metrics().items()},
                        classifier=clf_fp.key, output_digest=clf_fp.key)


def table(stage):
    """Per path: validation metrics of the saved classifier."""
    import pandas as pd

    rows = []
    for kind in stage.kinds():
        m = (stage.step_stats(f"train_{kind}") or {}).get("metrics") or {}
        rows.append({"kind": kind, **{k.split("/", 1)[1]: v for k, v in m.items()}})
    return pd.DataFrame(rows).set_index("kind")
