"""Stage 02's fingerprints (phi_lib.filter.keys): each result-affecting knob and input changes
the key of the step it affects, no operational knob changes any; the embeddings cache and the
judge's identity follow the model's content, not its name."""
import numpy as np
import pytest

from phi_lib.config import load
from phi_lib.filter import keys

pytestmark = pytest.mark.unit


def cfg_of(tmp_path, **over):
    return load("params/smoke.yaml", {"run.output_root": str(tmp_path / "out"), **over})


def fake_model(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


JUDGE_KNOBS = [{"filter.rubric": "full"}, {"filter.judge_format": "chat", "filter.rubric": "short"},
               {"filter.score_from": "text"}, {"filter.annotation_sampling.temperature": 0.5},
               {"filter.annotation_sampling.max_new_tokens": 3}, {"filter.annotate_max_chars": 501},
               {"filter.annotator.dtype": "float32"},
               {"filter.annotator.kind": "openai", "filter.annotator.base_urls": ["http://h:1/v1"]}]
JUDGE_OPERATIONAL = [{"filter.annotator.batch_size": 1}, {"filter.annotator.max_concurrency": 1},
                     {"filter.annotator.timeout_s": 1.0}, {"filter.annotator.device": "cpu"},
                     {"filter.annotator.max_retries": 0}, {"filter.annotator.requests_per_s": 2.0},
                     {"filter.annotator.cache": False}, {"filter.annotator.api_key_env": "K"},
                     {"filter.annotator.base_urls": ["http://h:1/v1"]}]


def test_annotator_fingerprint_is_the_judge_and_nothing_operational(tmp_path):
    model = fake_model(tmp_path / "judge", b"weights-1")
    base = {"filter.annotator.model": model}
    k0 = keys.annotator(cfg_of(tmp_path, **base), "web").key
    for over in JUDGE_KNOBS:
        assert keys.annotator(cfg_of(tmp_path, **base, **over), "web").key != k0, over
    for over in JUDGE_OPERATIONAL:
        assert keys.annotator(cfg_of(tmp_path, **base, **over), "web").key == k0, over
    assert keys.annotator(cfg_of(tmp_path, **base), "code").key != k0  # phi-1's code prompt
    fake_model(tmp_path / "judge", b"weights-2, retrained")  # same name, another model
    assert keys.annotator(cfg_of(tmp_path, **base), "web").key != k0
    # the sample: n_annotate, the pool and the seed are the annotate step's, not the judge's
    fp = keys.annotate(cfg_of(tmp_path, **base), "web", "c")[0]
    for over in ({"filter.n_annotate": 5}, {"filter.annotate_pool_docs": 10}, {"run.seed": 1}):
        assert keys.annotate(cfg_of(tmp_path, **base, **over), "web", "c")[0].key != fp.key, over
    assert keys.annotate(cfg_of(tmp_path, **base), "web", "other candidates")[0].key != fp.key
    # a pool at or above max_docs (smoke: 300) is the same sample as none
    assert keys.annotate(cfg_of(tmp_path, **base, **{"filter.annotate_pool_docs": 300}),
                         "web", "c")[0].key == fp.key


def test_classifier_fingerprint_holds_what_the_head_is_a_function_of(tmp_path):
    emb = fake_model(tmp_path / "emb", b"e1")
    base = {"filter.embedder": emb, "filter.classifier": "random_forest"}
    k0 = keys.classifier(cfg_of(tmp_path, **base), "web", "labels").key
    for over in ({"filter.classifier": "ridge"}, {"filter.n_estimators": 7}, {"run.seed": 9},
                 {"filter.embed_max_tokens": 64}):
        assert keys.classifier(cfg_of(tmp_path, **{**base, **over}), "web", "labels").key != k0, over
    assert keys.classifier(cfg_of(tmp_path, **base), "web", "other labels").key != k0
    for over in ({"filter.embed_batch_size": 3}, {"filter.score_batch_size": 3},
                 {"filter.shard_size": 3}, {"filter.val_fraction": 0.5},
                 {"filter.label_threshold": 2.0}, {"filter.keep_fraction": 0.9}):
        assert keys.classifier(cfg_of(tmp_path, **{**base, **over}), "web", "labels").key == k0, over
    # validation knobs retrain (the train step) without changing the classifier
    t0 = keys.train(cfg_of(tmp_path, **base), "web", "labels")[0].key
    assert keys.train(cfg_of(tmp_path, **base, **{"filter.val_fraction": 0.5}), "web", "labels")[0].key != t0
    # ridge has no trees and no randomness: neither knob makes it another classifier
    ridge = {**base, "filter.classifier": "ridge"}
    r0 = keys.classifier(cfg_of(tmp_path, **ridge), "web", "labels").key
    assert keys.classifier(cfg_of(tmp_path, **ridge, **{"filter.n_estimators": 7}), "web", "labels").key == r0
    fake_model(tmp_path / "emb", b"e2, retrained")
    assert keys.classifier(cfg_of(tmp_path, **base), "web", "labels").key != k0


def test_prefilter_fingerprint_follows_the_corpus_bytes_and_its_own_knobs(tmp_path):
    data = tmp_path / "data"
    corpus = data / "corpora" / "web" / "toy"
    corpus.mkdir(parents=True)
    (corpus / "a.jsonl").write_text('{"text": "one"}\n')
    over = {"run.data_dir": str(data), "filter.corpus": ["corpora/web/toy"],
            "filter.decontaminate_against": []}
    cfg = cfg_of(tmp_path, **over)
    web, code = keys.prefilter(cfg, "web", ["corpora/web/toy"]).key, keys.prefilter(cfg, "code", ["stdlib"]).key
    assert keys.prefilter(cfg_of(tmp_path, **over, **{"filter.min_code_lines": 9}), "web",
                          ["corpora/web/toy"]).key == web  # a code knob
    assert keys.prefilter(cfg_of(tmp_path, **over, **{"filter.min_code_lines": 9}), "code",
                          ["stdlib"]).key != code
    for knob in ({"filter.min_words": 3}, {"filter.max_docs": 5}, {"filter.dedup_threshold": 0.5},
                 {"filter.decontaminate_against": ["humaneval"]}):
        assert keys.prefilter(cfg_of(tmp_path, **{**over, **knob}), "web",
                              ["corpora/web/toy"]).key != web, knob
    assert keys.prefilter(cfg_of(tmp_path, **over, **{"filter.shard_size": 3}), "web",
                          ["corpora/web/toy"]).key == web
    (corpus / "a.jsonl").write_text('{"text": "one, edited"}\n')
    assert keys.prefilter(cfg, "web", ["corpora/web/toy"]).key != web


def test_embedding_cache_is_keyed_by_identity_and_length(tmp_path):
    from phi_lib.embed import CachedEmbedder, Embedder

    class Counting(Embedder):
        name, dim, texts = "counting", 4, 0

        def embed(self, texts):
            Counting.texts += len(texts)
            return np.ones((len(texts), 4), np.float32) * np.arange(1, len(texts) + 1)[:, None]

    db = tmp_path / "emb.sqlite"
    a = CachedEmbedder(lambda: Counting(), db, 128, identity="model-v1", name="m")
    a.embed(["x", "y"])
    assert Counting.texts == 2 and a.dim == 4
    CachedEmbedder(lambda: Counting(), db, 128, identity="model-v1").embed(["x", "y"])
    assert Counting.texts == 2  # served from disk, the model never made
    CachedEmbedder(lambda: Counting(), db, 128, identity="model-v2").embed(["x"])  # retrained
    CachedEmbedder(lambda: Counting(), db, 64, identity="model-v1").embed(["x"])   # shorter cut
    assert Counting.texts == 4
    with pytest.raises(ValueError, match="identity"):
        CachedEmbedder(lambda: Counting(), db, 128)


def test_label_source_fasttext_and_eval_knobs_are_in_their_fingerprints(tmp_path):
    ref = {"filter.label_source": "reference"}
    a0 = keys.annotate(cfg_of(tmp_path, **ref), "web", "c")[0].key
    for over in ({"filter.label_source": "union"}, {"filter.label_source": "llm"},
                 {"filter.n_reference": 7}, {"filter.min_words": 60},
                 {"filter.reference_corpus": ["corpora/textbook/tinystories"]}):
        assert keys.annotate(cfg_of(tmp_path, **{**ref, **over}), "web", "c")[0].key != a0, over
    # reference labels ask no judge: a new judge does not relabel them (the code path's does)
    judge = {"filter.rubric": "full"}
    assert keys.annotate(cfg_of(tmp_path, **ref, **judge), "web", "c")[0].key == a0
    assert keys.annotate(cfg_of(tmp_path, **ref, **judge), "code", "c")[0].key != \
        keys.annotate(cfg_of(tmp_path, **ref), "code", "c")[0].key
    ft = {"filter.classifier": "fasttext"}
    c0 = keys.classifier(cfg_of(tmp_path, **ft), "web", "labels").key
    for over in ({"filter.fasttext_epoch": 3}, {"filter.fasttext_dim": 8}, {"filter.fasttext_lr": 0.5},
                 {"filter.fasttext_word_ngrams": 1}, {"filter.fasttext_bucket": 1000},
                 {"filter.label_threshold": 2.0}, {"run.seed": 9}):
        assert keys.classifier(cfg_of(tmp_path, **{**ft, **over}), "web", "labels").key != c0, over
    for over in ({"filter.embedder": "other"}, {"filter.n_estimators": 7}):  # fastText reads text
        assert keys.classifier(cfg_of(tmp_path, **{**ft, **over}), "web", "labels").key == c0, over
    e0 = keys.evaluate(cfg_of(tmp_path), "clf", 2.0).key
    for over in ({"filter.eval_per_class": 7}, {"filter.eval_judge_docs": 3}, {"filter.eval_sets": []},
                 {"filter.eval_negative_corpus": ["corpora/web/data-prep-kit-cc"]}, {"filter.rubric": "full"}):
        assert keys.evaluate(cfg_of(tmp_path, **over), "clf", 2.0).key != e0, over
    assert keys.evaluate(cfg_of(tmp_path), "other clf", 2.0).key != e0
    assert keys.evaluate(cfg_of(tmp_path), "clf", 2.5).key != e0
    assert keys.evaluate(cfg_of(tmp_path, **{"filter.annotator.batch_size": 1}), "clf", 2.0).key == e0
