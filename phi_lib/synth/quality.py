"""Quality filters for generated samples; each returns why it drops a record, or None.

Order (cheap first): truncation, length, repetition, exercise format, benchmark
decontamination (13-gram, phi-1), the sandboxed exercise run (done in parallel over a
batch), and last near-duplicates (MinHash in id order: only a sample that passed everything
else enters the index, and the first copy wins). All but the last judge a sample alone, so
their verdicts can be reused for an unchanged completion under unchanged filter settings;
near-duplicates are decided again over the whole kind, so the result does not depend on the
order in which samples were generated.

A failed request is no sample: it never reaches these filters (phi_lib.synth.generate).
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


def run_exercises(programs: list[str], cfg: SynthConfig) -> list[tuple[str, str]]:
    """Run each program (solution + asserts) in the sandbox: per program (its status:
    passed / failed / timeout / error, detail: the last line of its stderr, e.g. the
    AssertionError)."""
    from phi_lib.sandbox import run_programs

    out = []
    for r in run_programs(programs, timeout_s=cfg.exercise_timeout_s, memory_mb=1024,
                          isolation=cfg.sandbox_isolation, key=SANDBOX_KEY):
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        out.append((r.status, lines[-1][:200] if lines else ""))
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


def check_alone(records: list[dict], cfg: SynthConfig, benchmarks, code_benchmarks=None,
                code_embedder=None) -> None:
    """Run every filter that judges a sample by itself (all but near-duplicates) on
    `records`, setting `drop_reason` (and `drop_detail`) on those that fail.

    `benchmarks`: a callable returning `phi_lib.decontaminate.BenchmarkNgrams` (built on first
    use, only if some sample gets that far); `code_benchmarks` one returning
    `phi_lib.synth.code_decontam.CodeBenchmarks`: an exercise's program gets its best AST
    match (`ast_match`; exact at or above 0.8, the table's lowest threshold, where pairs too
    different in length are not compared), dropped as `contaminated_ast` at
    `decontaminate_ast_threshold`; with `code_embedder` (a callable returning an Embedder)
    also its nearest solution by embedding (`embedding_match`), dropped as
    `contaminated_embedding` at `decontaminate_embedding_threshold`. An exercise that got as
    far as the sandbox records its `sandbox_status` (passed, failed, timeout, error)."""
    programs: dict[int, str] = {}
    for i, rec in enumerate(records):
        reason = (check_truncated(rec["finish_reason"], cfg) or check_length(rec["text"], cfg)
                  or check_repetition(rec["text"], cfg))
        if reason is None and rec["kind"] == "code_exercises":
            reason, programs[i] = exercise_program(rec["text"], rec["function_name"])
            if reason and rec["finish_reason"] == "length":  # say why it is incomplete
                reason, rec["drop_detail"] = "exercise_truncated", (
                    f"{reason}: the completion hit max_new_tokens "
                    f"({rec['sampling']['max_new_tokens']}) before the exercise was complete")
        if reason is None and cfg.decontaminate_against:
            bench = benchmarks().match(rec["text"])
            if bench is not None:
                reason, rec["drop_detail"] = "contaminated", bench
        if reason is None and i in programs and code_benchmarks and cfg.decontaminate_code_against:
            m = code_benchmarks().nearest(programs[i])
            rec["ast_match"] = {"benchmark": m.benchmark, "rate": round(m.rate, 4)}
            thr = cfg.decontaminate_ast_threshold
            if thr is not None and m.rate >= thr:
                reason, rec["drop_detail"] = "contaminated_ast", f"{m.benchmark} (match rate {m.rate:.3f})"
        if reason:
            rec["drop_reason"] = reason
            programs.pop(i, None)
    if programs and code_benchmarks and code_embedder and cfg.decontaminate_code_against:
        idx = sorted(programs)
        thr = cfg.decontaminate_embedding_threshold
        for i, m in zip(idx, code_benchmarks().embedding_nearest([programs[i] for i in idx],
                                                                 code_embedder())):
            records[i]["embedding_match"] = {"benchmark": m.benchmark, "similarity": round(m.rate, 4)}
            if thr is not None and m.rate >= thr:
                records[i]["drop_reason"] = "contaminated_embedding"
                records[i]["drop_detail"] = f"{m.benchmark} (cosine {m.rate:.3f})"
                programs.pop(i)
    if cfg.check_exercises and programs:
        idx = sorted(programs)
        for i, (status, detail) in zip(idx, run_exercises([programs[i] for i in idx], cfg)):
            records[i]["sandbox_status"] = status  # it ran: the manifest counts these
            if status != "passed":
                records[i]["drop_reason"], records[i]["drop_detail"] = f"exercise_{status}", detail


def drop_near_duplicates(records: list[dict], threshold: float) -> None:
    """Mark `near_duplicate` (detail: the id of the first copy) every record, in id order,
    that is a near-duplicate of an earlier one that passed every other filter."""
    near = NearDuplicates(threshold)
    for rec in sorted(records, key=lambda r: r["id"]):
        if not rec.get("drop_reason"):
            dup = near.duplicate_of(rec["kind"], rec["id"], rec["text"])
            if dup is not None:
                rec["drop_reason"], rec["drop_detail"] = "near_duplicate", dup
