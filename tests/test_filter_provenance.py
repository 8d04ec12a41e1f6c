"""Stage 02 provenance at the library level: a changed judge relabels, a changed classifier
rescores everything, a grown corpus is scored by one classifier only. Real C4 pages; the
judge is scripted (a label per prompt) and the embedder a stand-in (hashed words) so that
these tests take seconds; the runner-level tests use the real models."""
import hashlib

import numpy as np
import pytest

from phi_lib.backends.base import Backend, Completion
from phi_lib.config import load
from phi_lib.embed import Embedder
from phi_lib.filter import FilterStage

pytestmark = pytest.mark.unit


class ScriptedJudge(Backend):
    """A label per prompt: `salt` makes another judge (another rubric, another model)."""

    name, model = "scripted", "judge"

    def __init__(self, salt: str):
        self.salt, self.asked = salt, 0

    def generate(self, prompts, params, *, chat=True, logprobs=0, progress=False, seeds=None):
        self.asked += len(prompts)
        return [Completion(text=f" {self.label(p)}", finish_reason="stop") for p in prompts]

    def label(self, prompt) -> int:
        return int(hashlib.sha256((self.salt + str(prompt)).encode()).hexdigest(), 16) % 6


class WordHashEmbedder(Embedder):
    """Bag of hashed words, 64-d (deterministic, fast); counts what it embeds."""

    name, dim = "word-hash", 64

    def __init__(self):
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def config(tmp_path, **over):
    base = {"run.output_root": str(tmp_path), "filter.corpus": ["corpora/web/c4-en"],
            "filter.code_corpus": None, "filter.max_docs": 40, "filter.decontaminate_against": [],
            "filter.n_annotate": 16, "filter.n_estimators": 10, "filter.score_batch_size": 8,
            "filter.judge_format": "completion", "filter.score_from": "text",
            "filter.label_source": "llm", "filter.classifier": "random_forest", "filter.eval_sets": [],
            "filter.rubric": "short"}
    return load("params/smoke.yaml", {**base, **{f"filter.{k}": v for k, v in over.items()}})


def stage_of(cfg):
    stage = FilterStage(cfg, cfg.run_dir / "02_filter_web", progress=False)
    stage._embedder = WordHashEmbedder()
    return stage


def run_all(cfg, judge):
    stage = stage_of(cfg)
    stage.prefilter()
    stage.annotate(backend=judge)
    stage.train()
    stage.score()
    stage.keep()
    return stage


def expected_scores(stage, kind="web"):
    """Every candidate scored now by the stage's saved classifier (the reference)."""
    docs = list(stage.candidates(kind))
    clf = stage.classifier(kind)
    s = clf.score_embeddings(WordHashEmbedder().embed([d["text"] for d in docs]))
    return {d["key"]: round(float(x), 5) for d, x in zip(docs, s)}


def test_a_new_rubric_relabels_every_sample(tmp_path):
    run_all(config(tmp_path / "a"), ScriptedJudge("short"))
    judge = ScriptedJudge("full")
    stage = run_all(config(tmp_path / "a", rubric="full"), judge)  # same folder, new judge
    labels = {r["key"]: r["label"] for r in stage.annotations("web")}
    fresh = run_all(config(tmp_path / "ref", rubric="full"), ScriptedJudge("full"))
    assert judge.asked == 16  # every sample asked again
    assert labels == {r["key"]: r["label"] for r in fresh.annotations("web")}


def test_a_new_classifier_rescores_every_candidate(tmp_path):
    run_all(config(tmp_path), ScriptedJudge("a"))
    stage = run_all(config(tmp_path, classifier="ridge"), ScriptedJudge("a"))
    scored = {r["key"]: r["score"] for r in stage.scored("web")}
    ref = expected_scores(stage)
    assert stage.classifier("web").meta["head"] == "ridge"
    assert scored.keys() == ref.keys()
    assert all(scored[k] == pytest.approx(ref[k], abs=1e-4) for k in ref)


def test_growing_max_docs_never_mixes_two_classifiers(tmp_path):
    run_all(config(tmp_path, max_docs=30), ScriptedJudge("a"))
    stage = run_all(config(tmp_path, max_docs=60), ScriptedJudge("a"))
    scored = {r["key"]: r["score"] for r in stage.scored("web")}
    ref = expected_scores(stage)
    assert scored.keys() == ref.keys() and len(ref) > 30
    assert all(scored[k] == pytest.approx(ref[k], abs=1e-4) for k in ref)


def test_benchmark_ngram_cache_follows_the_data_folder_and_file_contents(tmp_path):
    from phi_lib.decontaminate import BenchmarkNgrams

    a = "the quick brown fox jumps over the lazy dog while thirteen words are being counted here"
    b = "a completely different sentence about rivers lakes and oceans that has more than thirteen words"
    for folder, text in (("d1", a), ("d2", b)):
        bench = tmp_path / folder / "benchmarks" / "toy"
        bench.mkdir(parents=True)
        (bench / "test.jsonl").write_text('{"q": "%s"}\n' % text)
    cache = tmp_path / "cache"
    one = BenchmarkNgrams.build(["toy"], 13, data_dir=str(tmp_path / "d1"), cache_dir=cache)
    assert one.match("x " + a) == "toy" and one.match("x " + b) is None
    two = BenchmarkNgrams.build(["toy"], 13, data_dir=str(tmp_path / "d2"), cache_dir=cache)
    assert two.match("x " + b) == "toy" and two.match("x " + a) is None  # the other data folder
    (tmp_path / "d1" / "benchmarks" / "toy" / "test.jsonl").write_text('{"q": "%s"}\n' % b)
    three = BenchmarkNgrams.build(["toy"], 13, data_dir=str(tmp_path / "d1"), cache_dir=cache)
    assert three.match("x " + b) == "toy" and three.match("x " + a) is None  # edited file


def stamps(stage) -> dict:
    """When each recorded step last ran (a step that did not run keeps its stamp)."""
    return {s["step"]: (s["finished_at"], s["fingerprint"]["key"]) for s in stage.all_stats()}


def test_operational_knobs_recompute_nothing(tmp_path):
    from phi_lib.stages import STAGES

    first = run_all(config(tmp_path), ScriptedJudge("a"))
    before = stamps(first)
    cfg = config(tmp_path, score_batch_size=3, shard_size=5, embed_batch_size=7,
                 **{"annotator.batch_size": 2, "annotator.max_concurrency": 1,
                    "annotator.timeout_s": 1.0, "annotator.device": "cpu"})
    assert STAGES["02"].fingerprint(cfg).key == STAGES["02"].fingerprint(first.cfg).key
    judge = ScriptedJudge("a")
    again = run_all(cfg, judge)
    assert judge.asked == 0 and again.embedder.texts == 0
    assert stamps(again) == before


def test_keep_fraction_rewrites_kept_only(tmp_path):
    first = run_all(config(tmp_path), ScriptedJudge("a"))
    before, n_kept = stamps(first), first.step_stats("keep_web")["counts"]["web/kept"]
    again = run_all(config(tmp_path, keep_fraction=0.6), ScriptedJudge("a"))
    after = stamps(again)
    assert again.embedder.texts == 0
    assert {k for k in after if after[k] != before[k]} == {"keep_web"}
    kept = list(again.candidates("web"))
    n = again.step_stats("keep_web")["counts"]["web/kept"]
    assert n > n_kept and n == sum(1 for _ in __import__("phi_lib.filter.files", fromlist=["x"])
                                   .read_kept(again.out, "web"))
    assert n == pytest.approx(0.6 * len(kept), abs=2)


def test_validation_knobs_retrain_but_never_rescore(tmp_path):
    first = run_all(config(tmp_path), ScriptedJudge("a"))
    key, before = first.step_stats("train_web")["classifier"], stamps(first)
    again = run_all(config(tmp_path, val_fraction=0.4, label_threshold=2.0), ScriptedJudge("a"))
    after = stamps(again)
    assert again.step_stats("train_web")["classifier"] == key  # the same head...
    assert again.step_stats("train_web")["metrics"]["web/n_val"] == 6  # ...validated anew
    assert {k for k in after if after[k] != before[k]} == {"train_web"}  # nothing rescored
    assert again.embedder.texts == again.step_stats("annotate_web")["counts"]["web/annotations/labelled"]


def test_grown_corpus_with_a_fixed_pool_scores_only_the_new_documents(tmp_path):
    first = run_all(config(tmp_path, max_docs=30), ScriptedJudge("a"))
    key = first.step_stats("train_web")["classifier"]
    old = {r["key"]: r["score"] for r in first.scored("web")}
    judge = ScriptedJudge("a")
    grown = run_all(config(tmp_path, max_docs=60, annotate_pool_docs=30), judge)
    new = {r["key"]: r for r in grown.scored("web")}
    n_cand = sum(1 for _ in grown.candidates("web"))
    assert judge.asked == 0 and grown.step_stats("train_web")["classifier"] == key
    assert len(new) == n_cand > len(old) and old.keys() <= new.keys()
    assert grown.step_stats("score_web")["scored_now"] == n_cand - len(old) == grown.embedder.texts
    assert all(r["classifier"] == key for r in new.values())
    assert all(new[k]["score"] == s for k, s in old.items())  # the old scores stand


def test_scoring_killed_after_a_classifier_change_resumes_with_the_new_classifier(tmp_path):
    first = run_all(config(tmp_path), ScriptedJudge("a"))
    old_key = first.step_stats("train_web")["classifier"]
    cfg = config(tmp_path, classifier="ridge", score_batch_size=4)
    stage = stage_of(cfg)
    stage.prefilter(), stage.annotate(backend=ScriptedJudge("a")), stage.train()
    new_key = stage.step_stats("train_web")["classifier"]
    inner = stage._embedder

    class Dies(Embedder):
        name, dim, calls = inner.name, inner.dim, 0

        def embed(self, texts):
            Dies.calls += 1
            if Dies.calls > 3:
                raise KeyboardInterrupt("killed")
            return inner.embed(texts)

    stage._embedder = Dies()
    with pytest.raises(KeyboardInterrupt):
        stage.score()
    on_disk = list(stage.scored("web"))
    assert len(on_disk) == 12 and {r["classifier"] for r in on_disk} == {new_key}  # 3 batches
    again = stage_of(cfg)
    again.score()
    scores = list(again.scored("web"))
    assert {r["classifier"] for r in scores} == {new_key} != {old_key}
    assert again.step_stats("score_web")["scored_now"] == len(scores) - 12
    ref = expected_scores(again)
    assert {r["key"]: r["score"] for r in scores} == pytest.approx(ref, abs=1e-4)


def test_a_step_never_reads_a_stale_upstream(tmp_path):
    from phi_lib.filter.stage import StepNotCurrent

    run_all(config(tmp_path), ScriptedJudge("a"))
    stage = stage_of(config(tmp_path, classifier="ridge"))
    with pytest.raises(StepNotCurrent, match=r"step train_web is not current \(classifier\.head, "):
        stage.score()  # a restarted kernel jumping to the score cell
    with pytest.raises(StepNotCurrent, match=r"train_web"):
        stage.write_manifest()


def test_a_backend_error_is_asked_again_not_kept_as_a_label(tmp_path):
    class Flaky(ScriptedJudge):
        def generate(self, prompts, params, **kw):
            out = super().generate(prompts, params, **kw)
            return [Completion(text="", finish_reason="error", error="timeout") if i % 4 == 0 else c
                    for i, c in enumerate(out)]

    cfg = config(tmp_path)
    stage = stage_of(cfg)
    stage.prefilter()
    stage.annotate(backend=Flaky("a"))
    errors = stage.step_stats("annotate_web")["errors"]
    from phi_lib.filter.steps import annotate

    assert errors > 0 and annotate.table(stage)["status_error"]["web"] == errors  # counted, shown
    judge = ScriptedJudge("a")
    stage_of(cfg).annotate(backend=judge)  # the next run
    assert judge.asked == errors
    recs = stage.annotations("web")
    assert len(recs) == 16 and not [r for r in recs if r["status"] == "error"]


def test_a_path_taken_out_of_the_config_leaves_nothing_behind(tmp_path):
    stage = run_all(config(tmp_path, code_corpus="stdlib"), ScriptedJudge("a"))
    assert (stage.out / "kept_code").is_dir() and stage.step_stats("score_code")
    web_only = run_all(config(tmp_path), ScriptedJudge("a"))
    assert not [p.name for p in web_only.out.rglob("*code*")]  # kept_code/, classifier_code/, .steps
    man = web_only.write_manifest()
    assert not [k for k in list(man["counts"]) + list(man["metrics"]) if k.startswith("code/")]
