"""Step 4, score: every candidate by the saved classifier, in batches -> `scored/<kind>/`.

Each score carries the key of the classifier fingerprint that gave it. Before scoring,
scores of another classifier (a new head, new labels, a new embedder) and of documents
that are no longer candidates are removed, so the folder never mixes two classifiers: a
new classifier rescores everything, a grown corpus with the same classifier scores only
the new candidates, and a run killed midway resumes with the classifier it had started.
"""
from __future__ import annotations

from phi_lib.filter import files, keys
from phi_lib.provenance import Fingerprint

SCORE_FIELDS = ("key", "score")


def fingerprint(stage, kind: str) -> Fingerprint:
    return keys.score(stage.current("train", kind)["classifier"],
                      stage.current("prefilter", kind)["output_digest"])


def run(stage, kind: str) -> dict:
    from tqdm.auto import tqdm

    name, fp = f"score_{kind}", fingerprint(stage, kind)
    if stage.step_current(name, fp):
        return stage.step_stats(name)
    clf_key = stage.current("train", kind)["classifier"]
    with stage.timed() as t:
        clf = stage.classifier(kind)
        if (clf.meta.get("fingerprint") or {}).get("key") != clf_key:
            raise RuntimeError(f"stage 02: {stage.out / files.CLASSIFIER_DIR[kind]} is not the "
                               f"classifier step train_{kind} recorded: run stage.train() first")
        cand = {d["key"] for d in files.read(stage.out, files.CANDIDATES, kind)}
        stale = files.prune(stage.out, files.SCORED, kind, shard_size=stage.fc.shard_size,
                            keep=lambda r: r.get("classifier") == clf_key and r["key"] in cand)
        new = 0
        with files.writer(stage.out, files.SCORED, kind, stage.fc.shard_size) as w:
            bar = tqdm(total=len(cand), initial=len(w), desc=f"score {kind}",
                       disable=not stage.progress)
            batch: list[dict] = []
            for doc in files.read(stage.out, files.CANDIDATES, kind):
                if w.has(doc["key"]):
                    continue
                batch.append(doc)
                if len(batch) >= stage.fc.score_batch_size:
                    new += _score_batch(stage, clf, clf_key, batch, w, bar)
                    batch = []
            if batch:
                new += _score_batch(stage, clf, clf_key, batch, w, bar)
            bar.close()
        scores = sorted(files.read(stage.out, files.SCORED, kind),
                        key=lambda r: r["key"])
    return stage.record(name, fingerprint=fp, seconds=t["seconds"],
                        counts={f"{kind}/scored": len(scores)}, classifier=clf_key,
                        scored_now=new, stale_removed=stale,
                        output_digest=files.digest_of(scores, SCORE_FIELDS))


def _score_batch(stage, clf, clf_key: str, batch: list[dict], w, bar) -> int:
    scores = clf.score_texts([d["text"] for d in batch])  # embeds through the stage's cache
    for d, s in zip(batch, scores):
        w.write({"key": d["key"], "score": round(float(s), 5), "classifier": clf_key})
    bar.update(len(batch))
    return len(batch)


def scores(stage, kind: str) -> dict[str, float]:
    """Candidate key -> score, all by the current classifier (checked)."""
    clf_key = stage.current("train", kind)["classifier"]
    out = {}
    for r in files.read(stage.out, files.SCORED, kind):
        if r.get("classifier") != clf_key:
            raise RuntimeError(f"stage 02: scored/{kind} holds a score of another classifier "
                               f"({r.get('classifier')} != {clf_key}): run stage.score() first")
        out[r["key"]] = r["score"]
    return out
