"""Quality filters for generated samples; each returns why it drops a record, or None.

Order (cheap first): truncation, length, repetition, exercise format, benchmark
decontamination (13-gram, phi-1), the sandboxed exercise run (done in parallel over a
batch), and last near-duplicates (MinHash against the samples kept so far: only a sample that
passed everything else enters the index).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from phi_lib.config import SynthConfig

_WORD = re.compile(r"\w+")
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that are repeats of an earlier one (0 = none, ->1 = a loop)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def check_length(text: str, cfg: SynthConfig) -> Optional[str]:
    return "too_short" if len(text.strip()) < cfg.min_chars else None


def check_truncated(finish_reason: str, cfg: SynthConfig) -> Optional[str]:
    if finish_reason == "error":
        return "backend_error"
    return "truncated" if cfg.drop_truncated and finish_reason == "length" else None


def check_repetition(text: str, cfg: SynthConfig) -> Optional[str]:
    return "repetition" if repeated_ngram_fraction(text) > cfg.max_repeated_ngrams else None


def extract_code(text: str) -> str:
    """The Python code of a completion: its fenced blocks joined, else the whole text."""
    blocks = _CODE_BLOCK.findall(text)
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else text.strip()


def exercise_program(text: str, function_name: str) -> tuple[Optional[str], str]:
    """(drop reason or None, the program: the exercise with its asserts)."""
    code = extract_code(text)
    if not re.search(rf"^\s*def\s+{re.escape(function_name)}\s*\(", code, re.M):
        return "exercise_missing_function", code
    asserts = re.findall(rf"^\s*assert\b.*\b{re.escape(function_name)}\s*\(", code, re.M)
    if not asserts:
        return "exercise_no_asserts", code
    try:
        compile(code, "<exercise>", "exec")
    except SyntaxError:
        return "exercise_syntax_error", code
    return None, code


SANDBOX_KEY = "synth.sandbox_isolation"


def run_exercises(programs: list[str], cfg: SynthConfig) -> list[tuple[Optional[str], str]]:
    """Run each program (solution + asserts) in the sandbox: per program (drop reason or None,
    detail: the last line of its stderr, e.g. the AssertionError)."""
    from phi_lib.sandbox import run_programs

    out = []
    for r in run_programs(programs, timeout_s=cfg.exercise_timeout_s, memory_mb=1024,
                          isolation=cfg.sandbox_isolation, key=SANDBOX_KEY):
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        out.append((None if r.status == "passed" else f"exercise_{r.status}",
                    lines[-1][:200] if lines else ""))
    return out


class NearDuplicates:
    """MinHash LSH over the samples kept so far (per kind): the first copy wins."""

    def __init__(self, threshold: float):
        from phi_lib.dedup import MinHashDedup

        self.threshold = threshold
        self._index: dict[str, MinHashDedup] = {}

    def duplicate_of(self, kind: str, key: str, text: str) -> Optional[str]:
        from phi_lib.dedup import MinHashDedup

        if kind not in self._index:
            self._index[kind] = MinHashDedup(threshold=self.threshold)
        return self._index[kind].duplicate_of(key, text)
