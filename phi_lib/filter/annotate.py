"""LLM annotation of educational value: prompts out, parsed scores back, resumable.

Each annotated document becomes one record with the reply, the score parsed from the text,
the score from the answer tokens' log-probabilities (local models), the parse status and the
label used for training (`score_from`, falling back to the other score when the preferred
one is missing), and the fingerprint key of the judge that made it (`annotator`). A record
is written as soon as its batch returns, so an interrupted run resumes where it stopped;
the backend's request cache makes re-asking free as well.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from phi_lib.filter.prompts import annotation_prompt, logprob_score, parse_score, yesno_score
from phi_lib.io import ShardedJsonlWriter

TOP_LOGPROBS = 10
"""Alternatives asked per generated token: enough to hold all six digits 0-5 (OpenAI's API
allows up to 20)."""


def label_of(score_text: Optional[float], score_lp: Optional[float], score_from: str) -> Optional[float]:
    first, second = (score_text, score_lp) if score_from == "text" else (score_lp, score_text)
    return first if first is not None else second


def annotation_record(doc: dict, kind: str, completion, score_from: str,
                      annotator: str = "", rubric: str = "full") -> dict:
    if rubric == "yesno":
        parsed, lp = yesno_score(completion.text, completion.top_logprobs, completion.error)
    else:
        parsed = parse_score(completion.text, completion.error)
        lp = logprob_score(completion.top_logprobs, completion.text or "", parsed.span)
    return {"key": doc["key"], "id": doc["id"], "corpus": doc["corpus"], "kind": kind,
            "text": doc["text"], "reply": completion.text, "status": parsed.status,
            "score_text": parsed.score, "score_logprobs": lp,
            "label": label_of(parsed.score, lp, score_from),
            "finish_reason": completion.finish_reason, "error": completion.error,
            "cached": bool(getattr(completion, "cached", False)), "annotator": annotator}


def annotate(docs: Sequence[dict], kind: str, backend, cfg, writer: ShardedJsonlWriter,
             progress: bool = True, annotator: str = "") -> Counter:
    """Annotate the documents `writer` does not hold yet, each record stamped with the
    `annotator` fingerprint key; returns counts of parse statuses."""
    from tqdm.auto import tqdm

    todo = [d for d in docs if not writer.has(d["key"])]
    statuses: Counter = Counter()
    step = max(cfg.annotator.batch_size * 2, 1)
    bar = tqdm(total=len(docs), initial=len(docs) - len(todo), desc=f"annotate {kind}",
               disable=not progress)
    for start in range(0, len(todo), step):
        batch = todo[start:start + step]
        completion = cfg.judge_format == "completion"
        prompts = [annotation_prompt(d["text"], kind, cfg.annotate_max_chars, cfg.rubric,
                                     completion) for d in batch]
        completions = backend.generate(prompts, cfg.annotation_sampling, chat=not completion,
                                       logprobs=TOP_LOGPROBS)
        for doc, c in zip(batch, completions):
            rec = annotation_record(doc, kind, c, cfg.score_from, annotator, cfg.rubric)
            statuses[rec["status"]] += 1
            writer.write(rec)
        bar.update(len(batch))
    bar.close()
    writer.close()
    return statuses
