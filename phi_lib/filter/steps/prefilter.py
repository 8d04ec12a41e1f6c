"""Step 1, pre-filter: heuristic blocks, decontamination and MinHash dedup over the corpus
of one path (`max_docs` per corpus); the survivors -> `candidates/<kind>`.

Every decision depends only on a document and those before it (dedup keeps the first
copy), so a grown `max_docs` keeps every earlier candidate. Each candidate carries its
position `pos` in its corpus (the annotation pool is a prefix of each corpus).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterator

from phi_lib.filter import files, keys
from phi_lib.provenance import Fingerprint

CANDIDATE_FIELDS = ("key", "id", "text", "source", "corpus", "pos")


def fingerprint(stage, kind: str) -> Fingerprint:
    return keys.prefilter(stage.cfg, kind, stage.specs(kind))


def documents(stage, kind: str, stats) -> Iterator[dict]:
    """The corpus of one path, `max_docs` per corpus, each doc with its `key` and `pos`."""
    from phi_lib.corpora import iter_documents

    fc = stage.fc
    for spec in stage.specs(kind):
        docs = iter_documents(spec, text_field=fc.text_field, stats=stats,
                              data_dir=stage.cfg.run.data_dir, code=(kind == "code") or None)
        for n, doc in enumerate(docs):
            if fc.max_docs is not None and n >= fc.max_docs:
                break
            doc["key"], doc["pos"] = f"{doc['corpus']}/{doc['id']}", n
            yield doc


def run(stage, kind: str) -> dict:
    import shutil

    from tqdm.auto import tqdm

    from phi_lib.dedup import MinHashDedup
    from phi_lib.filter.heuristics import code_blocks, first_drop_reason, web_blocks
    from phi_lib.io import ReadStats

    name, fp = f"prefilter_{kind}", fingerprint(stage, kind)
    if stage.step_current(name, fp):
        return stage.step_stats(name)
    fc = stage.fc
    with stage.timed() as t:
        shutil.rmtree(files.folder(stage.out, files.CANDIDATES, kind), ignore_errors=True)
        blocks = web_blocks(fc) if kind == "web" else code_blocks(fc)
        dedup = MinHashDedup(fc.dedup_threshold, fc.dedup_num_perm)
        contam = stage.contamination()
        stats, seen, out = ReadStats(), set(), files.Digest(CANDIDATE_FIELDS)
        per: dict[str, Counter] = defaultdict(Counter)
        with files.writer(stage.out, files.CANDIDATES, kind, fc.shard_size) as w:
            for doc in tqdm(documents(stage, kind, stats), desc=f"pre-filter {kind}",
                            disable=not stage.progress, mininterval=2):
                c = per[doc["corpus"]]
                c["read"] += 1
                reason = "duplicate_id" if doc["key"] in seen else None
                seen.add(doc["key"])
                reason = reason or first_drop_reason(blocks, doc["text"])
                if reason is None and contam is not None:
                    bench = contam.match(doc["text"])
                    reason = f"contaminated_{bench}" if bench else None
                if reason is None and dedup.duplicate_of(doc["key"], doc["text"]) is not None:
                    reason = "near_duplicate"
                if reason is not None:
                    c[f"drop_{reason}"] += 1
                    continue
                c["candidates"] += 1
                rec = {k: doc[k] for k in CANDIDATE_FIELDS}
                w.write(rec)
                out.add(rec)
    counts, drops = {f"{kind}/corrupt": stats.n_corrupt}, {}
    for corpus, c in per.items():
        for k, v in c.items():
            if k.startswith("drop_"):
                drops[f"{kind}/{corpus}/{k[5:]}"] = v
            else:
                counts[f"{kind}/{corpus}/{k}"] = v
    if contam is not None:
        counts["benchmark_lines_unchecked"] = contam.unreadable
    return stage.record(name, fingerprint=fp, counts=counts, drops=drops, seconds=t["seconds"],
                        per_corpus={k: dict(c) for k, c in per.items()},
                        candidates=out.n, output_digest=out.hexdigest(),
                        corrupt_examples=[list(e) for e in stats.corrupt[:5]])


def table(stage):
    """Per path and corpus: documents read, candidates, and each drop reason."""
    import pandas as pd

    rows = [{"kind": kind, "corpus": corpus, **c}
            for kind in stage.kinds()
            for corpus, c in (stage.step_stats(f"prefilter_{kind}") or {}).get("per_corpus", {}).items()]
    df = pd.DataFrame(rows).fillna(0)
    num = df.select_dtypes("number").columns
    df[num] = df[num].astype(int)
    return df.set_index(["kind", "corpus"])
