"""The hand grader: each grade saved as it is given, resume at the first ungraded item after a
restart, no duplicates, torn/invalid lines counted, the widget a thin shell over the book."""
import json

import pytest

from phi_lib.io import append_jsonl, read_jsonl
from phi_lib.safety.grader import GradeBook, widget
from phi_lib.safety.judge import item_key

pytestmark = pytest.mark.unit


def _items(n=5):
    return [{"model": "m" if i % 2 else "smollm2", "id": f"p{i}", "category": "c",
             "prompt": f"prompt {i} ", "completion": f"completion {i}"} for i in range(n)]


def test_grades_persist_and_resume(tmp_path):
    path = tmp_path / "grades_human.jsonl"
    items = _items()
    book = GradeBook(path, items)
    assert book.next_index() == 0 and book.n_graded == 0
    book.grade_current("pass")
    book.grade_current("fail")
    assert len(path.read_text().splitlines()) == 2  # on disk at once, one line per grade
    # the notebook is closed and reopened: a new book resumes at item 2
    book = GradeBook(path, items)
    assert book.next_index() == 2 and book.current() is items[2]
    assert [book.grade_of(it) for it in items] == ["pass", "fail", None, None, None]
    book.grade_current("did_not_understand")
    # grading a later item out of order: the next one is still the first ungraded
    book.grade(items[4], "pass")
    assert GradeBook(path, items).next_index() == 3
    book.grade_current("fail")
    assert book.next_index() is None and book.current() is None and book.grade_current("pass") is None
    recs = list(read_jsonl(path))
    assert [r["item"] for r in recs] == [item_key(items[i]) for i in (0, 1, 2, 4, 3)]
    assert {"model", "id", "category", "grade", "time"} <= set(recs[0])


def test_no_duplicates_and_explicit_regrade(tmp_path):
    path = tmp_path / "g.jsonl"
    items = _items(2)
    book = GradeBook(path, items)
    book.grade(items[0], "pass")
    with pytest.raises(ValueError, match="already graded 'pass'"):
        book.grade(items[0], "fail")
    with pytest.raises(ValueError, match="grade must be one of"):
        book.grade(items[1], "good")
    with pytest.raises(KeyError, match="not one of the items"):
        book.grade({**items[1], "id": "other"}, "pass")
    book.grade(items[0], "fail", regrade=True)  # appended; the newer line wins
    again = GradeBook(path, items)
    assert again.grade_of(items[0]) == "fail" and again.n_graded == 1
    assert len(path.read_text().splitlines()) == 2


def test_torn_and_invalid_lines_are_counted(tmp_path):
    path = tmp_path / "g.jsonl"
    items = _items(3)
    GradeBook(path, items).grade_current("pass")
    with open(path, "a") as f:  # a crash in the middle of a write, then a hand edit
        f.write('{"item": "smollm2/p1')
    book = GradeBook(path, items)
    assert book.stats.n_corrupt == 1 and book.next_index() == 1
    book.grade_current("fail")  # starts on a fresh line: the torn one stays isolated
    append_jsonl(path, {"item": item_key(items[2]), "grade": "excellent"})
    book = GradeBook(path, items)
    assert book.stats.n_corrupt == 2 and book.n_graded == 2 and book.next_index() == 2
    assert json.loads(path.read_text().splitlines()[-2])["grade"] == "fail"


def test_grades_of_other_completions_are_stale(tmp_path):
    path = tmp_path / "g.jsonl"
    items = _items(2)
    GradeBook(path, items).grade_current("pass")
    changed = [{**items[0], "completion": "a new completion after retraining"}, items[1]]
    book = GradeBook(path, changed)
    assert book.stale == 1 and book.n_graded == 0 and book.next_index() == 0


def test_widget_clicks_grade_through_the_book(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "g.jsonl"
    items = _items(2)
    book = GradeBook(path, items)
    ui = widget(book)
    status, text, row = ui.children
    passed, failed, dnu = row.children
    assert "0 / 2 graded" in status.value and "prompt 0" in text.value
    assert "smollm2" not in text.value  # blind: the model is not shown
    failed.click()
    assert GradeBook(path, items).grade_of(items[0]) == "fail" and "prompt 1" in text.value
    dnu.click()
    assert "All completions are graded" in text.value and passed.disabled
    assert [r["grade"] for r in read_jsonl(path)] == ["fail", "did_not_understand"]
