"""The judge's prompts and the parsing of its replies.

Web text gets the FineWeb-Edu additive 0-5 rubric (Penedo et al. 2024, verbatim). Code gets
phi-1's question ("determine its educational value for a student whose goal is to learn
basic coding concepts", sec. 2.1; the paper does not publish the full prompt) in the same
additive 0-5 form, so both paths share one scale, one parser and one classifier head.

A reply is parsed into a score in [0, 5] or a reason why there is none (`no_score`,
`out_of_range`, `empty`, `error`): nothing is dropped silently. For local models the
log-probabilities of the answer token give a second, continuous score: the expected value
over the digit tokens 0-5 at the position where the score is written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

MAX_SCORE = 5

WEB_PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational value and could be useful in an educational setting for teaching from primary school to grade school levels using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align closely with educational standards. It might mix educational content with non-educational material, offering a superficial overview of potentially useful topics, or presenting information in a disorganized manner and incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts relevant to school curricula. It is coherent though it may not be comprehensive or could include some extraneous information. It may resemble an introductory section of a textbook or a basic tutorial that is suitable for learning but has notable limitations like treating concepts that are too complex for grade school students.
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level not higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a chapter from a textbook or a tutorial, offering substantial educational content, including exercises and solutions, with minimal irrelevant information, and the concepts aren't too advanced for grade school students. The content is coherent, focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching either at primary school or grade school. It follows detailed reasoning, the writing style is easy to follow and offers profound and thorough insights into the subject matter, devoid of any non-educational or complex content.

The extract:
{text}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>\""""

CODE_PROMPT = """Below is a source file. Determine its educational value for a student whose goal is to learn basic coding concepts, using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the program contains valid code, even if it is not educational, like boilerplate code, configurations or niche concepts.
- Add another point if the program addresses practical concepts, even if it lacks comments.
- Award a third point if the program is suitable for educational use and introduces key concepts in programming, such as loops, functions, data structures or algorithms. The code should be well-structured and contain some comments.
- Give a fourth point if the program is self-contained and highly relevant to teaching programming. It should be similar to a school exercise, a tutorial or a textbook section, with clear explanations.
- Grant a fifth point if the program is outstanding in its educational value and is perfectly suited for teaching programming. It should be well-written, easy to understand and contain step-by-step explanations and comments.

The code:
{text}

After examining the code:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>\""""

WEB_PROMPT_SHORT = """Rate the educational value of the web page extract below for teaching from primary school to grade school, on an additive 0-5 scale: +1 if it gives some basic educational information, even mixed with ads or irrelevant content; +1 if it addresses educational elements, even if superficial or disorganized; +1 if it is coherent, appropriate for educational use and introduces key concepts of school curricula; +1 if it is highly relevant and clearly written, like a textbook chapter or tutorial; +1 if it is outstanding, easy to follow and thorough.

The extract:
{text}

Conclude with the score using the format: "Educational score: <total points>\""""

CODE_PROMPT_SHORT = """Rate the educational value of the source file below for a student whose goal is to learn basic coding concepts, on an additive 0-5 scale: +1 if it is valid code; +1 if it addresses practical concepts; +1 if it introduces key programming concepts and is well structured with some comments; +1 if it is self-contained and reads like a school exercise or tutorial; +1 if it is outstanding for teaching, with step-by-step explanations.

The code:
{text}

Conclude with the score using the format: "Educational score: <total points>\""""

WEB_PROMPT_YESNO = """Here is an extract from a web page:
{text}

Question: Is this extract educational for a student, like a page of a textbook or a tutorial? Answer Yes or No."""

CODE_PROMPT_YESNO = """Here is a source file:
{text}

Question: Is this file educational for a student whose goal is to learn basic coding concepts? Answer Yes or No."""

PROMPTS = {("web", "full"): WEB_PROMPT, ("code", "full"): CODE_PROMPT,
           ("web", "short"): WEB_PROMPT_SHORT, ("code", "short"): CODE_PROMPT_SHORT,
           ("web", "yesno"): WEB_PROMPT_YESNO, ("code", "yesno"): CODE_PROMPT_YESNO}
ANSWER_PREFIX = "\n\nEducational score:"
"""Appended in `completion` format: the judge's next token is the score."""
YESNO_PREFIX = "\nAnswer:"
"""The `yesno` rubric's answer line: the next token is Yes or No."""


def annotation_prompt(text: str, kind: str, max_chars: int, rubric: str = "full",
                      completion: bool = False) -> str:
    """The judge's prompt for one document (`kind` = `web` or `code`), cut to `max_chars`.

    `completion=True` ends the prompt with `Educational score:` for raw completion, so the
    first generated token is the score (one forward pass of decoding, and its
    log-probabilities are the score distribution).
    """
    if (kind, rubric) not in PROMPTS:
        raise ValueError(f"annotation prompt ({kind!r}, {rubric!r}): expected kind web/code "
                         f"and rubric full/short/yesno")
    prompt = PROMPTS[(kind, rubric)].format(text=text[:max_chars])
    if not completion:
        return prompt
    return prompt + (YESNO_PREFIX if rubric == "yesno" else ANSWER_PREFIX)


@dataclass
class ParsedScore:
    score: Optional[float]
    """The score in [0, 5], or None."""
    status: str
    """`ok`, `no_score` (no number found), `out_of_range`, `empty` or `error`."""
    span: Optional[tuple[int, int]] = None
    """Character span of the number in the reply (aligns the log-probability score)."""


_NUM = r"(\d+(?:\.\d+)?)"
_PATTERNS = [  # most specific first; within a pattern the LAST match wins (the conclusion)
    re.compile(r"educational\s+(?:value\s+)?score\s*(?:is|of|=|:|-)?\s*[*_`\"']*\s*" + _NUM, re.I),
    re.compile(r"\b(?:total\s+)?(?:score|points?|rating)\s*(?:is|of|=|:|-)?\s*[*_`\"']*\s*" + _NUM
               + r"\s*(?:/\s*5|out\s+of\s+5|points?)?", re.I),
    re.compile(_NUM + r"\s*(?:/\s*5|out\s+of\s+5)\b", re.I),
    re.compile(r"^\s*[*_`\"']*" + _NUM + r"[*_`\"'.]*\s*$"),  # the whole reply is a number
]


def parse_score(reply: Optional[str], error: Optional[str] = None) -> ParsedScore:
    """Find the score a judge wrote; never raises, always says why there is none."""
    if error:
        return ParsedScore(None, "error")
    if reply is None or not reply.strip():
        return ParsedScore(None, "empty")
    for pat in _PATTERNS:
        matches = list(pat.finditer(reply))
        if matches:
            m = matches[-1]
            value = float(m.group(1))
            if 0 <= value <= MAX_SCORE:
                return ParsedScore(value, "ok", m.span(1))
            return ParsedScore(None, "out_of_range", m.span(1))
    return ParsedScore(None, "no_score")


def logprob_score(top_logprobs: Optional[list[dict[str, float]]], reply: str,
                  span: Optional[tuple[int, int]] = None) -> Optional[float]:
    """Expected score over the digit tokens 0-5 where the judge writes its score.

    The position is the generated token that covers `span` (the parsed number); the token
    strings are read back from the alternatives (the top one is the token emitted at
    temperature 0). Without a span, the last position whose top token is a digit is used.
    Returns None when no position offers a digit.
    """
    if not top_logprobs:
        return None
    tokens = [max(alts, key=alts.get) if alts else "" for alts in top_logprobs]
    pos = None
    if span is not None:
        offset = 0
        for i, tok in enumerate(tokens):
            if offset <= span[0] < offset + max(len(tok), 1):
                pos = i
                break
            offset += len(tok)
        if pos is not None and reply[:span[0]] != "".join(tokens)[:span[0]]:
            pos = None  # the tokens do not spell the reply (sampling): fall back below
    if pos is None:
        digit_positions = [i for i, t in enumerate(tokens) if t.strip().isdigit()]
        if not digit_positions:
            return None
        pos = digit_positions[-1]
    probs = {}
    for tok, lp in top_logprobs[pos].items():
        t = tok.strip()
        if t.isdigit() and int(t) <= MAX_SCORE:
            probs[int(t)] = probs.get(int(t), 0.0) + math.exp(lp)
    total = sum(probs.values())
    if total <= 0:
        return None
    return sum(d * p for d, p in probs.items()) / total


def yesno_score(reply: Optional[str], top_logprobs: Optional[list[dict[str, float]]],
                error: Optional[str] = None) -> tuple[ParsedScore, Optional[float]]:
    """The `yesno` rubric's (written score: Yes = 5, No = 0; 5 x P(Yes) / (P(Yes) + P(No))
    over the first answer token's alternatives, None when neither is among them)."""
    if error:
        return ParsedScore(None, "error"), None
    word = (reply or "").strip().split()
    first = word[0].strip(".,!:;\"'").lower() if word else ""
    parsed = (ParsedScore(float(MAX_SCORE), "ok") if first == "yes" else
              ParsedScore(0.0, "ok") if first == "no" else
              ParsedScore(None, "empty" if not word else "no_score"))
    if not top_logprobs:
        return parsed, None
    p = {"yes": 0.0, "no": 0.0}
    for tok, lp in top_logprobs[0].items():
        t = tok.strip().lower()
        if t in p:
            p[t] += math.exp(lp)
    total = p["yes"] + p["no"]
    return parsed, (MAX_SCORE * p["yes"] / total if total > 0 else None)
