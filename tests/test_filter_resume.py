"""Stage 02 scoring resumes: a run interrupted mid-corpus and rerun in a fresh FilterStage
scores only what is missing, never duplicates a document, and keeps what was written; the
kept shards and the extremes table agree with the scores. Real C4 pages and real MiniLM
embeddings; the judge is a scripted stand-in (the LLM judge has its own tests)."""
import pytest

from phi_lib.backends.base import Backend, Completion
from phi_lib.config import load
from phi_lib.embed import Embedder
from phi_lib.filter import FilterStage

pytestmark = pytest.mark.slow


class LengthJudge(Backend):
    """Scores a prompt by its length: arbitrary but deterministic labels on the 0-5 scale."""

    name, model = "scripted", "length-judge"

    def generate(self, prompts, params, *, chat=True, logprobs=0, progress=False, seeds=None):
        return [Completion(text=f" {len(p) % 6}", finish_reason="stop") for p in prompts]


class Interrupted(Embedder):
    """Passes through to `inner`, counting texts; raises KeyboardInterrupt on call `die_on`."""

    def __init__(self, inner, die_on=None):
        self.inner, self.name, self.dim, self.die_on = inner, inner.name, inner.dim, die_on
        self.calls = self.texts = 0

    def embed(self, texts):
        self.calls += 1
        if self.die_on is not None and self.calls >= self.die_on:
            raise KeyboardInterrupt("killed mid-corpus")
        self.texts += len(texts)
        return self.inner.embed(texts)


def test_scoring_resumes_without_loss_or_duplicates(tmp_path):
    cfg = load("params/smoke.yaml", {
        "run.output_root": str(tmp_path), "filter.corpus": ["corpora/web/c4-en"],
        "filter.code_corpus": None, "filter.max_docs": 40, "filter.decontaminate_against": [],
        "filter.n_annotate": 16, "filter.n_estimators": 10, "filter.score_batch_size": 8,
        "filter.shard_size": 8, "filter.label_source": "llm", "filter.eval_sets": [],
        "filter.rubric": "short"})
    out = cfg.run_dir / "02_filter_web"
    first = FilterStage(cfg, out, progress=False)
    first.prefilter()
    first.annotate(backend=LengthJudge())
    first.train()
    candidates = [d["key"] for d in first.candidates("web")]
    assert len(candidates) > 24
    first._embedder = Interrupted(first.embedder, die_on=3)
    with pytest.raises(KeyboardInterrupt):
        first.score()
    before = {r["key"]: r["score"] for r in first.scored("web")}
    assert len(before) == 16  # two batches of 8 made it to disk

    again = FilterStage(cfg, out, progress=False)  # a fresh process would start like this
    again.prefilter()  # done marker: nothing re-read
    again._embedder = Interrupted(again.embedder)
    again.score()
    assert again._embedder.texts == len(candidates) - 16  # only the missing ones were embedded
    scored = list(again.scored("web"))
    keys = [r["key"] for r in scored]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(candidates)
    assert all({r["key"]: r["score"] for r in scored}[k] == s for k, s in before.items())

    table = again.keep()  # per corpus: read, candidates, scored, kept
    thr = again.threshold("web")
    kept = [r["key"] for r in again.scored("web") if r["score"] >= thr]
    assert int(table["kept"].sum()) == len(kept) > 0
    ends = again.extremes(n=3)
    scores = sorted(r["score"] for r in scored)
    assert [float(s) for s in ends["highest score"]] == pytest.approx(scores[::-1][:3], abs=0.005)
    assert [float(s) for s in ends["lowest score"]] == pytest.approx(scores[:3], abs=0.005)
    assert again.write_manifest()["counts"]["corrupt_output_records"] == 0
