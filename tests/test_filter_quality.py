"""Stage 02 says how good its filter is: reference-data labels (DCLM) with each head on real
data-folder text where the quality is known by construction (textbook passages vs web
pages), the eval-set report with its baselines checked against an independent computation,
the holdout kept out of training, and the knobs that change labels, classifier and report.
The embedder is the hashed-words stand-in and the judge scripted, so these take seconds."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from phi_lib.backends.base import Completion
from phi_lib.config import load
from phi_lib.filter import FilterStage
from phi_lib.filter.evalset import check_disjoint_specs, quartile_aucs
from phi_lib.filter.prompts import annotation_prompt, yesno_score
from test_filter_provenance import ScriptedJudge, WordHashEmbedder

pytestmark = pytest.mark.unit

BOOK = "corpora/textbook/library-of-phi/gpt_3p5_turbo_instruct_full_synth/field_electrical_engineering_subfield_electronics_course_name_Electric_Machines.md"
EVAL_BOOK = "corpora/textbook/library-of-phi/gpt_4_full_synth/field_mechanical_engineering_subfield_fluid_mechanics_course_name_Interfacial_Phenomena.md"


def config(tmp_path, **over):
    base = {"run.output_root": str(tmp_path), "filter.corpus": ["corpora/web/c4-en"],
            "filter.code_corpus": None, "filter.max_docs": 40, "filter.decontaminate_against": [],
            "filter.n_annotate": 16, "filter.n_estimators": 20, "filter.score_batch_size": 16,
            "filter.judge_format": "completion", "filter.score_from": "text",
            "filter.label_source": "reference", "filter.reference_corpus": [BOOK],
            "filter.n_reference": 16, "filter.eval_sets": ["holdout"],
            "filter.eval_positive_corpus": [EVAL_BOOK],
            "filter.eval_negative_corpus": ["corpora/web/data-prep-kit-cc"],
            "filter.eval_per_class": 16, "filter.eval_judge_docs": 6,
            "filter.fasttext_bucket": 20_000, "filter.fasttext_dim": 16, "filter.rubric": "short"}
    return load("params/smoke.yaml", {**base, **{f"filter.{k}": v for k, v in over.items()}})


def run_all(cfg, judge=None):
    stage = FilterStage(cfg, cfg.run_dir / "02_filter_web", progress=False)
    stage._embedder = WordHashEmbedder()
    judge = judge or ScriptedJudge("eval")
    stage.prefilter()
    stage.annotate(backend=judge)
    stage.train()
    stage.score()
    stage.keep()
    stage.evaluate(backend=judge)
    return stage


def eval_rows(stage):
    return [json.loads(x) for x in (stage.out / "eval" / "holdout.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("head", ["fasttext", "ridge", "random_forest"])
def test_reference_labels_train_each_head_to_rank_held_out_quality(tmp_path, head):
    judge = ScriptedJudge("eval")
    stage = run_all(config(tmp_path, classifier=head), judge)
    ann = stage.annotations("web")
    pos = [r for r in ann if r["key"].startswith("reference:")]
    neg = [r for r in ann if not r["key"].startswith("reference:")]
    assert len(pos) == len(neg) == 16  # the reference passages and the web sample
    assert {r["label"] for r in pos} == {5.0} and {r["label"] for r in neg} == {0.0}
    assert judge.asked == 6  # no training label from the judge: only its zero-shot baseline
    rows = eval_rows(stage)
    y = np.array([r["binary"] for r in rows])
    assert y.sum() == 16 and len(y) == 32
    rep = json.loads((stage.out / "eval.json").read_text())["holdout"]
    clf = rep["scorers"]["classifier"]
    # the stage's numbers are the independent ones, recomputed from its per-document file
    assert clf["roc_auc"] == pytest.approx(roc_auc_score(y, [r["classifier"] for r in rows]))
    assert rep["scorers"]["length"]["roc_auc"] == pytest.approx(roc_auc_score(y, [r["words"] for r in rows]))
    assert clf["roc_auc"] > 0.7, (head, clf)  # other books and other crawls than in training
    judged = [r for r in rows if r["judge"] is not None]
    assert rep["scorers"]["judge"]["n"] == len(judged) == 6
    assert {r["binary"] for r in judged} == {0, 1}  # balanced: its AUC is defined
    assert rep["classifier_on"]["judge"]["n"] == 6  # the classifier on the judge's documents
    manifest = stage.write_manifest()
    assert manifest["metrics"]["web/eval/holdout/classifier/roc_auc"] == clf["roc_auc"]


def test_quartile_auc_matches_a_per_quartile_mann_whitney():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 2000, 200).astype(float)
    y = (rng.random(200) < 0.5).astype(int)
    s = y + rng.normal(0, 1, 200) + lengths / 1000
    edges = np.quantile(lengths, [0.25, 0.5, 0.75])
    for q, got in enumerate(quartile_aucs(y, s, lengths)):
        m = np.searchsorted(edges, lengths, side="right") == q
        p, n = s[m & (y == 1)], s[m & (y == 0)]
        mw = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])  # P(pos > neg)
        assert got == pytest.approx(mw)


def test_the_holdout_is_kept_out_of_training(tmp_path):
    with pytest.raises(ValueError, match="overlaps the training corpus"):
        check_disjoint_specs(["corpora/web"], ["corpora/web/c4-en"], "/work/shared")
    # the same book as reference and as eval positives: refused before any scoring
    cfg = config(tmp_path, eval_positive_corpus=[BOOK])
    stage = FilterStage(cfg, cfg.run_dir / "02_filter_web", progress=False)
    stage._embedder = WordHashEmbedder()
    stage.prefilter(), stage.annotate(), stage.train(), stage.score(), stage.keep()
    with pytest.raises(ValueError, match="overlaps the training corpus"):
        stage.evaluate(backend=ScriptedJudge("eval"))


def test_knobs_change_labels_classifier_and_report(tmp_path):
    cfg = config(tmp_path, classifier="fasttext")
    stage = run_all(cfg)
    step = lambda n: json.loads((stage.out / ".steps" / f"{n}_web.json").read_text())
    clf0, ann0, ev0 = step("train")["classifier"], step("annotate")["output_digest"], step("evaluate")
    scores0 = {r["key"]: r["score"] for r in stage.scored("web")}
    # a fastText knob: another classifier, everything rescored, labels untouched
    stage = run_all(config(tmp_path, classifier="fasttext", fasttext_epoch=3))
    assert step("train")["classifier"] != clf0 and step("annotate")["output_digest"] == ann0
    assert {r["classifier"] for r in stage.scored("web")} == {step("train")["classifier"]}
    assert {r["key"]: r["score"] for r in stage.scored("web")} != scores0
    # a label knob: new labels (more reference positives)
    stage = run_all(config(tmp_path, classifier="fasttext", fasttext_epoch=3, n_reference=12))
    assert step("annotate")["output_digest"] != ann0
    assert sum(r["key"].startswith("reference:") for r in stage.annotations("web")) == 12
    # an eval knob: only the report
    clf1 = step("train")["classifier"]
    stage = run_all(config(tmp_path, classifier="fasttext", fasttext_epoch=3, n_reference=12,
                           eval_per_class=10))
    assert step("train")["classifier"] == clf1
    assert step("evaluate")["counts"]["web/eval/holdout/docs"] == 20 != ev0["counts"]["web/eval/holdout/docs"]


def test_union_adds_reference_positives_to_the_judges_labels(tmp_path):
    judge = ScriptedJudge("u")
    stage = run_all(config(tmp_path, label_source="union", eval_judge_docs=0), judge)
    ann = stage.annotations("web")
    web = [r for r in ann if not r["key"].startswith("reference:")]
    assert len(web) == 16 and all(r["label"] == judge.label(annotation_prompt(
        r["text"], "web", stage.fc.annotate_max_chars, stage.fc.rubric, True)) for r in web)
    assert sum(r["label"] == 5.0 for r in ann if r["key"].startswith("reference:")) == 16


def test_yesno_judge_scores_by_the_answer_tokens_probability():
    lp = [{" Yes": math.log(0.6), " No": math.log(0.2), " Maybe": math.log(0.2)}]
    parsed, score = yesno_score(" Yes", lp)
    assert parsed.score == 5.0 and score == pytest.approx(5 * 0.6 / 0.8)
    assert yesno_score(" no.", None)[0].score == 0.0
    assert yesno_score(" perhaps", lp)[0].status == "no_score"
    assert annotation_prompt("x", "web", 10, "yesno", True).endswith("Answer:")


class FailingJudge(ScriptedJudge):
    def generate(self, prompts, params, **kw):
        self.asked += len(prompts)
        return [Completion(text=None, error="server down") for _ in prompts]


def test_a_judge_that_scores_nothing_is_reported_not_a_crash(tmp_path):
    stage = run_all(config(tmp_path, classifier="ridge"), FailingJudge("x"))
    rep = json.loads((stage.out / "eval.json").read_text())["holdout"]
    assert rep["unscored_by_judge"] == 6 and "judge" not in rep["scorers"]
    assert rep["scorers"]["classifier"]["roc_auc"] is not None
