"""Generated DPO pairs and the judge: FastChat's verdict and rating parsing, both orders asked,
ties / flips / unparsed counted and never kept; an interrupted run resumes without writing a
prompt twice; records of another fingerprint are removed, never mixed in."""
import json

import pytest

from phi_lib.backends.base import Completion
from phi_lib.config import load
from phi_lib.posttrain import judging, mt_bench, pairs
from phi_lib.provenance import Fingerprint

pytestmark = pytest.mark.unit


class Policy:
    """Two different answers per prompt, chosen by the sampling seed."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params, *, chat=True, seeds=None, **kw):
        self.calls += len(prompts)
        return [Completion(text=f"answer {s % 97}") for s in seeds]


class Judge:
    """Prefers the answer with the larger number; `ties` ids get [[C]]; fails on call `die_at`."""

    def __init__(self, die_at=None, ties=()):
        self.calls, self.die_at, self.ties = 0, die_at, ties

    def generate(self, prompts, params, *, chat=True, **kw):
        self.calls += 1
        if self.die_at is not None and self.calls >= self.die_at:
            raise KeyboardInterrupt("killed")
        out = []
        for p in prompts:
            body = p[1]["content"]
            a = int(body.split("[The Start of Assistant A's Answer]\nanswer ")[1].split("\n")[0])
            b = int(body.split("[The Start of Assistant B's Answer]\nanswer ")[1].split("\n")[0])
            tie = any(t in body for t in self.ties)
            out.append(Completion(text="Both fine. [[C]]" if tie else
                                  f"Explanation. [[{'A' if a > b else 'B'}]]"))
        return out


PROMPTS = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(5)]


def _run(tmp_path, judge, fp_key="one", prompts=PROMPTS):
    pc = load({}).posttrain
    fp = Fingerprint.of(config={"k": fp_key})
    return pairs.generate(prompts, Policy(), judge, pc, tmp_path / "gen", fp, run_seed=1,
                          batch_size=2, progress=False)


def _lines(folder):
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()] + \
        [json.loads(line) for f in folder.glob(".*.partial") for line in f.read_text().splitlines()]


def test_outcomes():
    assert pairs.outcome("A", "B") == ("kept", 0) and pairs.outcome("B", "A") == ("kept", 1)
    assert pairs.outcome("A", "A") == ("inconsistent", None)  # position bias
    assert pairs.outcome("C", "C") == ("tie", None) and pairs.outcome("C", "A")[0] == "inconsistent"
    assert pairs.outcome(None, "A") == ("unparsed", None)


def test_pairs_keep_the_better_answer_as_chosen_and_count_ties(tmp_path):
    recs = _run(tmp_path, Judge(ties=("question 3",)))
    assert [r["id"] for r in recs] == [p["id"] for p in PROMPTS]
    tie = next(r for r in recs if r["id"] == "p3")
    assert tie["status"] == "tie" and tie["better"] is None
    for r in recs:
        if r["status"] == "kept":
            pair = pairs.as_pair(r)
            win, lose = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
            assert int(win.split()[-1]) > int(lose.split()[-1])  # the judge's choice, both orders


def test_an_interrupted_run_resumes_without_duplicates_and_drops_stale_records(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, Judge(die_at=2))  # dies judging the second batch: batch one is on disk
    assert len(_lines(tmp_path / "gen")) == 2
    judge = Judge()
    recs = _run(tmp_path, judge)
    assert judge.calls == 2  # only the 3 prompts left, in batches of 2
    lines = _lines(tmp_path / "gen")
    assert sorted(r["id"] for r in lines) == sorted(p["id"] for p in PROMPTS)  # none twice
    assert len(recs) == 5 and {r["fingerprint"] for r in lines} == {Fingerprint.of(config={"k": "one"}).key}
    _run(tmp_path, Judge(), fp_key="two")  # another SFT model / judge: the old records go
    assert {r["fingerprint"] for r in _lines(tmp_path / "gen")} == {Fingerprint.of(config={"k": "two"}).key}


def test_fastchat_verdicts_and_ratings_parse_as_fastchat_reads_them():
    assert judging.parse_verdict("A is more helpful. [[A]]") == "A"
    assert judging.parse_verdict("I choose [[B]]") == "B" and judging.parse_verdict("tie: [[C]]") == "C"
    assert judging.parse_verdict("Assistant A is better.") is None
    assert judging.parse_verdict(" B]]", "completion") == "B" and judging.parse_verdict("Both", "completion") is None
    assert judging.parse_rating("Good answer. Rating: [[8]]") == 8.0
    assert judging.parse_rating("Rating: [7.5]") == 7.5 and judging.parse_rating("Rating: 8/10") is None
    assert judging.parse_rating("[[11]]") is None  # outside 1-10
    assert judging.parse_rating("6]]", "completion") == 6.0


def test_mt_bench_rubrics_use_the_reference_for_math_and_the_multi_turn_template():
    qs = {q["category"]: q for q in mt_bench.questions()}
    assert len(mt_bench.questions()) == 80 and [q["category"] for q in mt_bench.questions(3)] == [
        "writing", "roleplay", "reasoning"]  # the first N take the categories in turn
    refs = mt_bench.references()
    math = qs["math"]
    p, name = judging.rating_prompt(math, ["a1", "a2"], 0, refs[math["question_id"]])
    assert name == "single-math-v1" and refs[math["question_id"]][0] in p[1]["content"]
    p, name = judging.rating_prompt(qs["writing"], ["a1", "a2"], 1, None)
    assert name == "single-v1-multi-turn" and "### Assistant A:\na2" in p[1]["content"]
    text, _ = judging.rating_prompt(qs["writing"], ["a1", "a2"], 0, None, fmt="completion")
    assert text.endswith("Rating: [[") and "a1" in text


def test_mt_bench_score_is_the_mean_of_graded_turns():
    grades = [{"rating": 8.0, "turn": 1, "category": "math", "status": "ok"},
              {"rating": 4.0, "turn": 2, "category": "math", "status": "ok"},
              {"rating": None, "turn": 1, "category": "coding", "status": "unparsed"}]
    s = mt_bench.score(grades)
    assert (s["score"], s["turn_1"], s["turn_2"], s["unparsed"]) == (6.0, 8.0, 4.0, 1)
    assert s["categories"] == {"coding": None, "math": 6.0}
