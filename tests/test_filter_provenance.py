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
            "filter.judge_format": "completion", "filter.score_from": "text"}
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
