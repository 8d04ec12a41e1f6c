"""Cheap pre-filters that run before the classifier: each block returns a drop reason or None.

The thresholds follow Gopher's quality rules (Rae et al. 2021), as FineWeb and datatrove
apply them: word count, symbol-to-word ratio, repeated lines, and an English check by stop
words (Gopher: at least 2 of `the, be, to, of, and, that, have, with`). Source files get a
length check and the repeated-line check only; prose rules would reject most good code.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Protocol

STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))


class Block(Protocol):
    name: str

    def __call__(self, text: str) -> Optional[str]:
        """A drop reason (short, stable: it is a counter name), or None to keep."""


@dataclass
class NotEmpty:
    name: str = "empty"

    def __call__(self, text: str) -> Optional[str]:
        return "empty" if not text.strip() else None


@dataclass
class WordCount:
    min_words: int
    max_words: int
    name: str = "word_count"

    def __call__(self, text: str) -> Optional[str]:
        n = len(text.split())
        if n < self.min_words:
            return "too_short"
        if n > self.max_words:
            return "too_long"
        return None


@dataclass
class LineCount:
    min_lines: int
    name: str = "line_count"

    def __call__(self, text: str) -> Optional[str]:
        n = sum(1 for line in text.splitlines() if line.strip())
        return "too_few_lines" if n < self.min_lines else None


@dataclass
class SymbolRatio:
    """Gopher: drop documents with more than `max_ratio` `#` or `...` per word."""

    max_ratio: float
    name: str = "symbol_ratio"

    def __call__(self, text: str) -> Optional[str]:
        words = max(len(text.split()), 1)
        symbols = text.count("#") + text.count("...") + text.count("\u2026")
        return "symbol_ratio" if symbols / words > self.max_ratio else None


@dataclass
class DuplicateLines:
    """Gopher: drop documents whose non-blank lines are duplicates more than `max_fraction`."""

    max_fraction: float
    name: str = "duplicate_lines"

    def __call__(self, text: str) -> Optional[str]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            return None
        counts = Counter(lines)
        dup = sum(c - 1 for c in counts.values())
        return "duplicate_lines" if dup / len(lines) > self.max_fraction else None


@dataclass
class EnglishStopWords:
    """Gopher's language check: at least `min_stop_words` English stop words."""

    min_stop_words: int
    name: str = "language"

    def __call__(self, text: str) -> Optional[str]:
        found = 0
        for w in text.lower().split():
            if w.strip(".,;:!?\"'()") in STOP_WORDS:
                found += 1
                if found >= self.min_stop_words:
                    return None
        return "not_english"


def web_blocks(cfg) -> list[Block]:
    """The pre-filter chain for web text, from a `FilterConfig`."""
    return [NotEmpty(), WordCount(cfg.min_words, cfg.max_words), SymbolRatio(cfg.max_symbol_ratio),
            DuplicateLines(cfg.max_duplicate_line_fraction), EnglishStopWords(cfg.min_stopwords)]


def code_blocks(cfg) -> list[Block]:
    """The pre-filter chain for source files."""
    return [NotEmpty(), LineCount(cfg.min_code_lines),
            DuplicateLines(cfg.max_duplicate_line_fraction)]


def first_drop_reason(blocks: list[Block], text: str) -> Optional[str]:
    """The reason of the first block that drops `text`, or None if all keep it."""
    for block in blocks:
        reason = block(text)
        if reason is not None:
            return reason
    return None
