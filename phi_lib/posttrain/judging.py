"""The judge's rubrics and the parsing of its replies: FastChat's published MT-bench prompts.

The rubrics are read from the data folder (`benchmarks/mt_bench/judge_prompts.jsonl`,
lm-sys/FastChat's `llm_judge`): `pair-v2` ranks two answers (`[[A]]`, `[[B]]`, `[[C]]` = tie)
and ranks the generated DPO pairs; `single-v1` / `single-math-v1` (with a reference answer)
grade an answer 1-10 (`Rating: [[N]]`), their `-multi-turn` variants the second turn.

`fmt="chat"` sends FastChat's system prompt and filled template as chat messages and parses
the reply as FastChat does (`[[A]]` ...; the rating `[[N]]`, else `[N]`). `fmt="completion"`
is for small local judges: the same text as one raw prompt ending in `Verdict: [[` or
`Rating: [[`, and the verdict or number the judge writes first is taken. A reply with no
verdict or rating is `unparsed` (counted, never guessed).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

from phi_lib.io import read_jsonl
from phi_lib.paths import resolve

PROMPTS = "benchmarks/mt_bench/judge_prompts.jsonl"
NEED_REF_CATS = ("math", "reasoning", "coding")
"""MT-bench categories graded against the reference answer (FastChat's NEED_REF_CATS)."""
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_LEADING_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)")
_LEADING_VERDICT = re.compile(r"\s*([ABC])\b")


@lru_cache(maxsize=4)
def judge_prompts(data_dir: Optional[str] = None) -> dict[str, dict]:
    path = resolve(PROMPTS, configured=data_dir)
    return {p["name"]: p for p in read_jsonl(path)}


def _as_prompt(p: dict, body: str, fmt: str, tail: str):
    if fmt == "completion":
        return f"{p['system_prompt']}\n\n{body}\n\n{tail}"
    return [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": body}]


# ----------------------------------------------------------------------------- pairwise
def pair_prompt(question: str, answer_a: str, answer_b: str, fmt: str = "chat",
                data_dir: Optional[str] = None):
    p = judge_prompts(data_dir)["pair-v2"]
    body = p["prompt_template"].format(question=question, answer_a=answer_a, answer_b=answer_b)
    return _as_prompt(p, body, fmt, "Verdict: [[")


def parse_verdict(text: Optional[str], fmt: str = "chat") -> Optional[str]:
    """`A`, `B`, `C` (tie) or None, as FastChat reads `[[A]]` / `[[B]]` / `[[C]]`."""
    if not text:
        return None
    if fmt == "completion":
        m = _LEADING_VERDICT.match(text)
        return m.group(1) if m else None
    for v in ("A", "B", "C"):  # FastChat's order
        if f"[[{v}]]" in text:
            return v
    return None


# ----------------------------------------------------------------------------- single answer
def rating_prompt(question: dict, answers: list[str], turn: int, reference: Optional[list[str]],
                  fmt: str = "chat", data_dir: Optional[str] = None):
    """The grading prompt of `answers[turn]` (turn 0 or 1) of an MT-bench question; the math
    rubric (with the reference answer) for the categories that have one."""
    math = question["category"] in NEED_REF_CATS and reference is not None
    name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn else "")
    p = judge_prompts(data_dir)[name]
    q = question["turns"]
    if turn == 0:
        kw = {"question": q[0], "answer": answers[0]}
        if math:
            kw["ref_answer_1"] = reference[0]
    else:
        kw = {"question_1": q[0], "question_2": q[1], "answer_1": answers[0], "answer_2": answers[1]}
        if math:
            kw.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    return _as_prompt(p, p["prompt_template"].format(**kw), fmt, "Rating: [["), name


def parse_rating(text: Optional[str], fmt: str = "chat") -> Optional[float]:
    """The 1-10 rating, as FastChat reads it (`[[N]]`, else `[N]`); None if there is none or it
    is out of range."""
    if not text:
        return None
    if fmt == "completion":
        m = _LEADING_NUMBER.match(text)
    else:
        m = _RATING.search(text) or _RATING_BACKUP.search(text)
    if not m:
        return None
    value = float(m.group(1))
    return value if 1.0 <= value <= 10.0 else None
