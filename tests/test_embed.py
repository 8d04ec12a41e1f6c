"""phi_lib.embed with the real models: causal-LM mean pooling is batch- and padding-invariant,
the on-disk cache serves repeats across instances, MiniLM gives unit vectors that separate
topics (stage 02 features, stage 01 embedding spread)."""
import numpy as np
import pytest
import torch

from phi_lib.embed import CachedEmbedder, get_embedder

pytestmark = pytest.mark.slow

TEXTS = ["Plants make sugar from light.",
         "A for loop in Python repeats a block once for every item of a list, in order.",
         "Rain falls, rivers carry the water to the sea, the sun warms it and clouds form again."]


def test_causal_lm_mean_pooling_matches_one_text_at_a_time():
    emb = get_embedder("smollm2", batch_size=8, max_tokens=64, device="cpu")
    batched = emb.embed(TEXTS)  # three lengths: the short ones are right-padded
    assert batched.shape == (3, emb.dim) and emb.dim == emb.model.config.hidden_size
    for text, row in zip(TEXTS, batched):  # reference: unpadded forward, plain mean
        ids = emb.tok(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.inference_mode():
            h = emb.model(**ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(row, h.mean(0).numpy(), rtol=1e-4, atol=1e-4)


def test_cache_serves_repeats_from_disk(tmp_path):
    inner = get_embedder("minilm", device="cpu")
    direct = inner.embed(TEXTS)
    assert direct.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-5)
    first = CachedEmbedder(inner, tmp_path / "emb.sqlite", max_tokens=256)
    a = first.embed(TEXTS[:2])
    assert (first.hits, first.misses) == (0, 2)
    first.close()
    again = CachedEmbedder(inner, tmp_path / "emb.sqlite", max_tokens=256)  # a rerun
    b = again.embed(TEXTS)
    assert (again.hits, again.misses) == (2, 1)  # only the new text was embedded
    np.testing.assert_allclose(b[:2], a, atol=0)
    np.testing.assert_allclose(b, direct, atol=2e-3)  # stored as float16
    other = CachedEmbedder(inner, tmp_path / "emb.sqlite", max_tokens=128)
    other.embed(TEXTS[:1])
    assert other.misses == 1  # another truncation length is another key
    assert again.embed([]).shape == (0, 384)


def test_embedding_spread_separates_topics():
    from phi_lib.synth.report import embedding_spread

    same, _ = embedding_spread([TEXTS[0], TEXTS[0], TEXTS[0]])
    mixed, emb = embedding_spread(TEXTS)
    assert same == pytest.approx(0.0, abs=1e-5) and 0.5 < mixed <= 2 and emb.shape == (3, 384)
    assert embedding_spread(TEXTS[:1]) == (0.0, None)
