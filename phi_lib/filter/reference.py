"""Reference-data labels (DCLM's recipe): textbook-quality passages are the positives, the
web sample the negatives, and the classifier learns to tell them apart; no judge needed.

    positives  `n_reference` passages of `filter.reference_corpus` that pass the web
               heuristics (seeded reservoir sample), label REFERENCE_LABEL
    negatives  the annotation sample of the web candidates, label 0 (`reference`), or the
               judge's label of each (`union`)

A reference record has the annotation record's fields (`status: reference`), so the train
step reads one folder whatever the label source.
"""
from __future__ import annotations

import random
from typing import Iterator

REFERENCE_LABEL = 5.0
"""Top of the 0-5 scale: a regression head's score of a reference-like page reads as 5."""
WEB_LABEL = 0.0


def sample_passages(specs: list[str], n: int, seed, blocks, data_dir, stats=None,
                    text_field: str = "text") -> list[dict]:
    """A seeded uniform sample of `n` passages of `specs` that `blocks` keep (one pass)."""
    from phi_lib.corpora import iter_documents
    from phi_lib.filter.heuristics import first_drop_reason
    from phi_lib.filter.reservoir import reservoir

    docs = (doc for doc in iter_documents(specs, text_field=text_field, stats=stats,
                                          data_dir=data_dir, code=False)
            if first_drop_reason(blocks, doc["text"]) is None)
    chosen = reservoir(docs, n, random.Random(f"{seed}-reference"))
    return sorted(chosen, key=lambda d: f"{d['corpus']}/{d['id']}")


def reference_records(docs: list[dict], label: float, status: str) -> Iterator[dict]:
    """Annotation-shaped records with a fixed label (no judge reply)."""
    for d in docs:
        key = d.get("key") or f"reference:{d['corpus']}/{d['id']}"
        yield {"key": key, "id": d["id"], "corpus": d["corpus"], "kind": "web", "text": d["text"],
               "reply": None, "status": status, "score_text": None, "score_logprobs": None,
               "label": label, "finish_reason": None, "error": None, "cached": False,
               "annotator": status}
