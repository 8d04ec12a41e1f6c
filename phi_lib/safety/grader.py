"""Grading by hand, as phi-1.5 did: one completion at a time, pass / fail / did not understand.

`GradeBook` is the whole logic and needs no browser: it reads `grades_human.jsonl`, says
which item comes next (the first one without a grade, so a closed notebook resumes where it
stopped) and appends each grade durably the moment it is given (`io.append_jsonl`).
The file is append-only; re-grading an item appends a newer record that supersedes the old
one. A line that is not a grade record (torn by a crash, a bad grade) is counted corrupt in
`stats`; a grade of a completion that is not among the items (an older completion, another
model) is counted in `stale` and kept in the file. `widget()` is a thin ipywidgets shell over
it: the text, three buttons, a progress line.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Optional, Sequence

from phi_lib.io import ReadStats, append_jsonl, read_jsonl
from phi_lib.safety.judge import GRADES, item_key

HUMAN_FILE = "grades_human.jsonl"


class GradeBook:
    """Human grades of `items` (completion records) kept in the JSONL file `path`."""

    def __init__(self, path: Path, items: Sequence[dict], grader: str = ""):
        self.path, self.grader = Path(path), grader
        self.items = list(items)
        self.keys = [item_key(c) for c in self.items]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("GradeBook: two items share a key (model/prompt id)")
        self.stats = ReadStats()
        self.stale = 0
        """Grade records of items not graded here (older completions, other models)."""
        self.grades: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        known = set(self.keys)
        if not self.path.is_file():
            return
        for rec in read_jsonl(self.path, self.stats):
            if not isinstance(rec.get("item"), str) or rec.get("grade") not in GRADES:
                self.stats.records -= 1
                self.stats.corrupt.append((str(self.path), 0, f"not a grade record: "
                                           f"{str(rec)[:120]}"))
            elif rec["item"] not in known:
                self.stale += 1
            else:
                self.grades[rec["item"]] = rec  # a later line re-grades the item

    # ------------------------------------------------------------------ state
    def next_index(self) -> Optional[int]:
        """Position of the first item without a grade; None when all are graded."""
        return next((i for i, k in enumerate(self.keys) if k not in self.grades), None)

    def current(self) -> Optional[dict]:
        i = self.next_index()
        return None if i is None else self.items[i]

    @property
    def n_graded(self) -> int:
        return len(self.grades)

    def grade_of(self, item: dict) -> Optional[str]:
        rec = self.grades.get(item_key(item))
        return None if rec is None else rec["grade"]

    # ------------------------------------------------------------------ grading
    def grade(self, item: dict, grade: str, *, regrade: bool = False) -> dict:
        """Record a grade now (one appended line). Grading an item twice needs `regrade`."""
        key = item_key(item)
        if key not in self.keys:
            raise KeyError(f"{key!r} is not one of the items being graded")
        if grade not in GRADES:
            raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
        if key in self.grades and not regrade:
            raise ValueError(f"{key!r} already graded {self.grades[key]['grade']!r}; "
                             f"pass regrade=True to change it")
        rec = {"item": key, "model": item["model"], "id": item["id"],
               "category": item["category"], "grade": grade, "grader": self.grader,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        append_jsonl(self.path, rec)
        self.grades[key] = rec
        return rec

    def grade_current(self, grade: str) -> Optional[dict]:
        """Grade the next ungraded item (what a button click does); None when all are done."""
        item = self.current()
        return None if item is None else self.grade(item, grade)


LABELS = {"pass": "Pass", "fail": "Fail", "did_not_understand": "Did not understand"}


def widget(book: GradeBook):
    """An ipywidgets grader over `book`: shows the next completion (not which model wrote
    it), grades on click, moves on. Display it; it never blocks a headless run."""
    import ipywidgets as w

    text = w.HTML()
    status = w.HTML()
    buttons = [w.Button(description=LABELS[g], button_style=style)
               for g, style in zip(GRADES, ("success", "danger", "warning"))]

    def refresh() -> None:
        item = book.current()
        n = len(book.items)
        status.value = (f"<b>{book.n_graded} / {n} graded</b> &middot; saved to "
                        f"<code>{html.escape(str(book.path))}</code>")
        if book.stats.n_corrupt:
            status.value += f" &middot; {book.stats.n_corrupt} unreadable line(s) ignored"
        if item is None:
            text.value = "<p><b>All completions are graded.</b></p>"
        else:
            text.value = (f"<p><i>{html.escape(item['category'])}</i></p>"
                          f"<p><b>{html.escape(item['prompt'])}</b>"
                          f"<span style='background:#ffe'>{html.escape(item['completion'])}</span></p>")
        for b in buttons:
            b.disabled = item is None

    def on_click(grade: str):
        def handler(_button) -> None:
            book.grade_current(grade)
            refresh()
        return handler

    for g, b in zip(GRADES, buttons):
        b.on_click(on_click(g))
    refresh()
    return w.VBox([status, text, w.HBox(buttons)])
