"""MT-bench: 80 two-turn questions answered by each model, graded 1-10 by the judge.

As FastChat's `gen_model_answer` / `gen_judgment` (single-answer grading): each question is
answered turn by turn in the model's chat format (the second turn sees the first answer),
with FastChat's temperature per category (0 for math, coding, reasoning, extraction; 0.1 for
stem and humanities; 0.7 for writing and roleplay); each turn is graded with the single-answer
rubric, the first with `single-v1`, the second with `single-v1-multi-turn` (the `-math`
variants with GPT-4's reference answers for math, reasoning and coding). The score is the
mean over every graded turn (FastChat's MT-bench score), with per-turn and per-category means;
replies without a rating are counted as `unparsed`.

Answers (`answers/`, keyed by question id) and grades (`grades/`, keyed by question id and
turn) are written as they come, so an interrupted run resumes without repeating any.
"""
from __future__ import annotations

import dataclasses
import zlib
from itertools import zip_longest
from pathlib import Path
from statistics import mean
from typing import Optional

from phi_lib.config import SamplingConfig
from phi_lib.io import ShardedJsonlWriter, read_jsonl, read_keyed
from phi_lib.paths import resolve

QUESTIONS = "benchmarks/mt_bench/question.jsonl"
REFERENCES = "benchmarks/mt_bench/reference_answer/gpt-4.jsonl"
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
"""FastChat's `temperature_config` (llm_judge/common.py)."""
PAPER = {"phi-3-mini": 8.38, "phi-3-small": 8.7, "phi-3-medium": 8.9}
"""MT-bench scores the Phi-3 report gives (GPT-4 judge)."""


def questions(limit: Optional[int] = None, data_dir: Optional[str] = None) -> list[dict]:
    """The questions, the first `limit` taking the 8 categories in turn (all when None)."""
    qs = list(read_jsonl(resolve(QUESTIONS, configured=data_dir)))
    if limit is None:
        return qs
    by_cat: dict[str, list] = {}
    for q in qs:
        by_cat.setdefault(q["category"], []).append(q)
    return [q for row in zip_longest(*by_cat.values()) for q in row if q is not None][:limit]


def references(data_dir: Optional[str] = None) -> dict[int, list[str]]:
    return {r["question_id"]: r["choices"][0]["turns"]
            for r in read_jsonl(resolve(REFERENCES, configured=data_dir))}


def _seed(qid: int, turn: int) -> int:
    return zlib.crc32(f"mt_bench-{qid}-{turn}".encode()) & 0x7FFFFFFF


def answer(backend, qs: list[dict], out_dir: Path, max_new_tokens: int, *, model_id: str,
           batch_size: int = 8) -> list[dict]:
    """Both turns of every question `out_dir` lacks; returns the records of `qs` in order."""
    writer = ShardedJsonlWriter(out_dir, "answers", 1000, "question_id")
    todo = [q for q in qs if not writer.has(q["question_id"])]
    with writer:
        for temp in sorted({TEMPERATURE.get(q["category"], 0.7) for q in todo}):
            group = [q for q in todo if TEMPERATURE.get(q["category"], 0.7) == temp]
            sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temp, top_p=1.0)
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                convs = [[{"role": "user", "content": q["turns"][0]}] for q in batch]
                first = backend.generate(convs, sampling, seeds=[_seed(q["question_id"], 0) for q in batch])
                convs = [c + [{"role": "assistant", "content": a.text.strip()},
                              {"role": "user", "content": q["turns"][1]}]
                         for c, a, q in zip(convs, first, batch)]
                second = backend.generate(convs, sampling, seeds=[_seed(q["question_id"], 1) for q in batch])
                for q, a1, a2 in zip(batch, first, second):
                    writer.write({"question_id": q["question_id"], "category": q["category"],
                                  "model": model_id, "turns": [a1.text.strip(), a2.text.strip()],
                                  "finish_reasons": [a1.finish_reason, a2.finish_reason],
                                  "errors": [e for e in (a1.error, a2.error) if e],
                                  "sampling": dataclasses.asdict(sampling)})
    return read_keyed(out_dir, "question_id", [str(q["question_id"]) for q in qs])


def grade(judge, qs: list[dict], answers: list[dict], out_dir: Path, sampling, fmt: str, *,
          data_dir: Optional[str] = None, batch_size: int = 8) -> list[dict]:
    """The judge's grade of each answered turn; returns the grade records in order."""
    from phi_lib.posttrain import judging

    refs = references(data_dir)
    by_id = {q["question_id"]: q for q in qs}
    writer = ShardedJsonlWriter(out_dir, "grades", 1000, "key")
    items = [(a, t) for a in answers for t in (0, 1)]
    todo = [(a, t) for a, t in items if not writer.has(f"{a['question_id']}-{t}")]
    with writer:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            asks, names = [], []
            for a, t in batch:
                q = by_id[a["question_id"]]
                p, name = judging.rating_prompt(q, a["turns"], t, refs.get(q["question_id"]),
                                                fmt, data_dir)
                asks.append(p)
                names.append(name)
            replies = judge.generate(asks, sampling, chat=fmt == "chat")
            for (a, t), name, r in zip(batch, names, replies):
                rating = None if r.error else judging.parse_rating(r.text, fmt)
                writer.write({"key": f"{a['question_id']}-{t}", "question_id": a["question_id"],
                              "turn": t + 1, "category": a["category"], "rubric": name,
                              "reply": r.text, "rating": rating,
                              "status": "error" if r.error else "ok" if rating is not None else "unparsed"})
    return read_keyed(out_dir, "key", [f"{a['question_id']}-{t}" for a, t in items])


def score(grades: list[dict]) -> dict:
    """MT-bench score (mean of the graded turns), by turn and category, and the unparsed count."""
    ok = [g for g in grades if g["rating"] is not None]

    def avg(gs):
        return round(mean(g["rating"] for g in gs), 3) if gs else None

    cats = sorted({g["category"] for g in grades})
    return {"score": avg(ok), "turn_1": avg([g for g in ok if g["turn"] == 1]),
            "turn_2": avg([g for g in ok if g["turn"] == 2]),
            "categories": {c: avg([g for g in ok if g["category"] == c]) for c in cats},
            "graded": len(ok), "unparsed": sum(g["status"] == "unparsed" for g in grades),
            "errors": sum(g["status"] == "error" for g in grades), "turns": len(grades)}
