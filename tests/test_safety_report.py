"""Grade counts per model/grader/category, human-judge agreement, the ToxiGen table and plot,
and the clear error when `checkpoint` has no stage-05 checkpoint to point at."""
import pytest

from phi_lib.config import load
from phi_lib.safety import report
from phi_lib.safety.stage import ToxicityStage
from phi_lib.safety.judge import item_key
from phi_lib.safety.safety_score import group_scores

pytestmark = pytest.mark.unit


def _items():
    cats = ["violence", "violence", "stereotypes", "stereotypes"]
    return [{"model": m, "id": f"p{i}", "category": c, "prompt": "p", "completion": f"{m}{i}"}
            for m in ("a", "b") for i, c in enumerate(cats)]


def test_grade_counts_per_model_and_category():
    items = _items()
    keys = [item_key(it) for it in items]
    grades = {keys[0]: "pass", keys[1]: None, keys[2]: "fail", keys[4]: "did_not_understand"}
    counts = report.grade_counts(items, grades)
    a, b = counts["a"], counts["b"]
    assert list(a) == ["violence", "stereotypes", "total"]  # total last
    assert a["violence"] == {"pass": 1, "fail": 0, "did_not_understand": 0, "unparsed": 1,
                             "ungraded": 0}
    assert a["stereotypes"]["fail"] == 1 and a["stereotypes"]["ungraded"] == 1
    assert sum(a["total"].values()) == 4 and b["total"]["ungraded"] == 3
    table = report.counts_table({"judge": counts})
    assert table.loc[("b", "judge", "total"), "did_not_understand"] == 1
    assert report.counts_table({}).empty


def test_agreement_kappa():
    human = {"1": "pass", "2": "pass", "3": "fail", "4": "fail", "5": "pass"}
    judge = {"1": "pass", "2": "fail", "3": "fail", "4": "fail", "5": None}
    res = report.agreement(human, judge)
    # items 1-4: observed 3/4, chance 1/2*1/4 + 1/2*3/4 = 1/2 -> kappa 1/2
    assert res["n"] == 4 and res["human_only"] == 1
    assert res["agreement"] == pytest.approx(0.75) and res["kappa"] == pytest.approx(0.5)
    assert res["confusion"] == {"fail|fail": 2, "pass|fail": 1, "pass|pass": 1}
    assert report.agreement({}, judge)["kappa"] is None
    assert report.agreement({"1": "pass"}, judge)["kappa"] is None  # one item: undefined
    same = report.agreement({"1": "pass", "2": "pass"}, {"1": "pass", "2": "pass"})
    assert same["agreement"] == 1.0 and same["kappa"] is None


def test_toxigen_table_and_plot(tmp_path):
    recs = [{"group": g, "label": l, "ppl": p} for g in ("women", "muslim")
            for l, ps in (("toxic", [9, 8, 7]), ("benign", [1, 2, 8])) for p in ps]
    scores = {"a": group_scores(recs), "b": group_scores(
        [{**r, "label": "benign" if r["label"] == "toxic" else "toxic"} for r in recs])}
    table = report.toxigen_table(scores)
    assert list(table.columns) == ["a", "b"] and "mean over groups" in table.index
    assert table.loc["women", "a"].startswith("0.833")
    fig = report.toxigen_plot(scores, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000 and len(fig.axes[0].patches) == 4


def test_checkpoint_without_stage_05_is_a_clear_error(tmp_path):
    cfg = load({"run": {"name": "nothing", "output_root": str(tmp_path)},
                "toxicity": {"models": ["checkpoint"]}})
    with pytest.raises(FileNotFoundError, match=r"toxicity.models: 'checkpoint'.*no checkpoint "
                                                r"under .*05_train.*--stages 05"):
        ToxicityStage(cfg).identities
