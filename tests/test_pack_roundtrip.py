"""Packing round trip: windows decode back to the source documents, EOS after each one,
document starts recorded, validation split by document, shards resumable."""
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from phi_lib.data import to_hf_dataset
from phi_lib.packed import PackedDataset
from test_mix_fixtures import build, corpora, mix_config, packed  # noqa: F401

pytestmark = pytest.mark.unit
EOS = 50256


@pytest.fixture(scope="module")
def reference_tokenizer():
    """The tokenizer file read directly with `tokenizers` (independent of our wrapper)."""
    return tokenizers.Tokenizer.from_file(
        str(Path(os.environ["PHI_DATA"]) / "tokenizers" / "codegen-350M-mono" / "tokenizer.json"))


def split_documents(mix_dir, split):
    """The split's token stream cut at the recorded document starts."""
    ds = PackedDataset(mix_dir, split)
    stream = np.concatenate([ds[i] for i in range(len(ds))])
    starts = [int(s) + i * ds.seq_len for i in range(len(ds)) for s in ds.doc_starts(i)]
    return ds, stream, starts


@pytest.mark.parametrize("split", ["train", "val"])
def test_windows_decode_back_to_documents(packed, reference_tokenizer, split):  # noqa: F811
    builder, docs = packed
    ds, stream, starts = split_documents(builder.out, split)
    assert ds.seq_len == 32 and stream.dtype == np.uint16 and len(stream) == len(ds) * 32
    by_text = {t: name for name, ds_docs in docs.items() for t in ds_docs}
    assert starts[0] == 0
    for a, b in zip(starts, starts[1:]):  # every complete document of the stream
        assert stream[b - 1] == EOS, "EOS ends every document"
        ids = stream[a: b - 1].tolist()
        assert EOS not in ids
        text = reference_tokenizer.decode(ids, skip_special_tokens=False)
        assert text in by_text, f"window text is no source document: {text[:60]!r}"
        assert reference_tokenizer.encode(text, add_special_tokens=False).ids == ids
    # the last document is cut by the end of the stream: a prefix of a real document
    tail = reference_tokenizer.decode(stream[starts[-1]:].tolist()).split("<|endoftext|>")[0]
    assert any(t.startswith(tail) for t in by_text)


def test_validation_is_split_by_document(packed, reference_tokenizer):  # noqa: F811
    builder, docs = packed
    texts = {}
    for split in ("train", "val"):
        _, stream, starts = split_documents(builder.out, split)
        texts[split] = {reference_tokenizer.decode(stream[a:b - 1].tolist())
                        for a, b in zip(starts, starts[1:])}
    assert texts["val"] and not texts["train"] & texts["val"]
    n_val = sum(int(m.sum()) for m in builder.masks()[1].values())
    assert 0.04 < n_val / sum(len(d) for d in docs.values()) < 0.2  # val_fraction 0.1
    # every val document is packed once, except what the incomplete last window drops
    index = json.loads((builder.out / "val" / "index.json").read_text())
    assert len(texts["val"]) == index["n_docs"] - 1  # the last one is cut by the stream end
    assert n_val - index["n_docs"] <= index["dropped_tail_tokens"] // 8  # docs are >= 8 tokens


def test_epochs_and_shares_realized(packed, reference_tokenizer):  # noqa: F811
    builder, docs = packed
    mix = json.loads((builder.out / "mix.json").read_text())
    _, stream, starts = split_documents(builder.out, "train")
    counts = Counter(reference_tokenizer.decode(stream[a:b - 1].tolist()) for a, b in zip(starts, starts[1:]))
    beta_train = [t for i, t in enumerate(docs["beta"]) if builder.masks()[0]["beta"][i]]
    beta_epochs = mix["plan"]["sources"]["beta"]["epochs"]
    assert 2.0 < beta_epochs < 4.5
    # each epoch is a full permutation: every training document repeats floor or ceil(epochs)
    reps = [counts[t] for t in beta_train]
    assert min(reps) >= int(beta_epochs) - 1 and max(reps) <= int(beta_epochs) + 1
    assert sum(reps) == pytest.approx(beta_epochs * len(beta_train), rel=0.15)
    shares = mix["splits"]["train"]["tokens_by_source"]
    total = mix["splits"]["train"]["n_tokens"]
    assert sum(shares.values()) == total <= 20_000
    assert shares["alpha"] / total == pytest.approx(0.6, abs=0.03)
    assert shares["beta"] / total == pytest.approx(0.4, abs=0.03)
    man = json.loads((builder.out / "manifest.json").read_text())
    assert man["metrics"]["share/beta"] == pytest.approx(0.4, abs=0.03)
    assert (builder.out / "mixture.png").is_file() and man["figures"] == ["mixture.png"]


def test_shards_and_datasets_interop(packed):  # noqa: F811
    builder, _ = packed
    ds = PackedDataset(builder.out, "train")
    index = json.loads((builder.out / "train" / "index.json").read_text())
    assert len(index["shards"]) > 1 and index["windows_per_shard"] == 100
    for name in index["shards"]:
        assert (builder.out / "train" / name).stat().st_size % (32 * 2) == 0
    hf = to_hf_dataset(builder.out, "train")
    assert len(hf) == len(ds)
    for i in (0, 99, 100, len(ds) - 1):  # across a shard boundary
        assert hf[i]["input_ids"] == ds[i].tolist()
    assert hf.features["input_ids"].length == 32


def test_pack_resumes_only_missing_shards(packed):  # noqa: F811
    builder, _ = packed
    folder = builder.out / "train"
    shards = sorted(folder.glob("shard-*.bin"))
    before = {p.name: p.read_bytes() for p in shards}
    # an interrupted run: the last shard never landed, the index was not written
    progress = json.loads((folder / "progress.json").read_text())
    progress["done"].remove(shards[-1].name)
    (folder / "progress.json").write_text(json.dumps(progress))
    shards[-1].unlink()
    (folder / "index.json").unlink()
    first_mtime = shards[0].stat().st_mtime_ns
    builder.pack()
    assert shards[0].stat().st_mtime_ns == first_mtime, "a finished shard was rewritten"
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.bin"))} == before
    assert (folder / "index.json").is_file()


def test_a_vocabulary_past_uint16_packs_as_uint32(corpora):  # noqa: F811
    # phi-3-small: 100,352 ids, EOS 100257 (past 65,535: uint16 would wrap it to 34721)
    from phi_lib.data.tokenizer import load_tokenizer

    tmp, docs = corpora
    cfg = mix_config(tmp, {"alpha": {"path": "corpora/alpha", "weight": 0.5},
                           "beta": {"path": "corpora/beta", "weight": 0.5}}, name="wide",
                     tokenizer="phi-3-small", total_tokens=6_000, seq_len=32, val_fraction=0.1,
                     shard_tokens=32 * 50)
    builder = build(cfg)
    tok = load_tokenizer("phi-3-small")
    cache = builder.out / ".cache" / "tokenized" / "alpha" / "state.json"  # the token cache
    assert json.loads(cache.read_text())["dtype"] == "uint32"
    index = json.loads((builder.out / "train" / "index.json").read_text())
    assert (index["dtype"], index["vocab_size"], index["eos_id"]) == ("uint32", 100_352, 100_257)
    mix = json.loads((builder.out / "mix.json").read_text())
    assert (mix["dtype"], mix["tokenizer"], mix["vocab_size"]) == ("uint32", "phi-3-small", 100_352)
    sizes = [(builder.out / "train" / name).stat().st_size for name in index["shards"]]
    assert sizes[:-1] == [50 * 32 * 4] * (len(sizes) - 1) and sum(sizes) == index["n_tokens"] * 4
    ds, stream, starts = split_documents(builder.out, "train")
    assert ds.dtype == stream.dtype == np.uint32 and int(stream.max()) == 100_257
    by_text = {t for ds_docs in docs.values() for t in ds_docs}
    for a, b in zip(starts, starts[1:]):
        assert stream[b - 1] == 100_257
        text = tok.decode(stream[a: b - 1].tolist())
        assert text in by_text and tok.encode(text) == stream[a: b - 1].tolist()
    batch, _ = next(ds.iter_batches(4))
    assert int(batch.max()) == 100_257  # the loader hands stage 05 the ids unchanged
    assert to_hf_dataset(builder.out, "train")[0]["input_ids"] == ds[0].tolist()


def test_token_dtype_follows_the_vocabulary():
    from phi_lib.packed import token_dtype

    assert [token_dtype(n).name for n in (32_011, 50_295, 65_536, 65_537, 100_352)] == [
        "uint16", "uint16", "uint16", "uint32", "uint32"]
    with pytest.raises(ValueError, match="vocab_size"):
        token_dtype(0)
