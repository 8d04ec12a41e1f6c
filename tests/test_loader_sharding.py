"""PackedDataset: rank/world sharding covers every window exactly once per epoch, resume from
a sample offset, deterministic order by seed, phases kept in order, document boundaries."""
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from phi_lib.packed import PackedDataset
from test_mix_fixtures import build, corpora, mix_config, packed  # noqa: F401

pytestmark = pytest.mark.unit


def contents(rows):
    """Multiset of window contents (a repeated source can pack identical windows)."""
    return Counter(np.asarray(r, dtype=np.uint16).tobytes() for r in rows)


@pytest.mark.parametrize("world_size, micro", [(1, 4), (2, 4), (3, 5), (4, 7)])
def test_ranks_cover_every_window_once_per_epoch(packed, world_size, micro):  # noqa: F811
    ds = PackedDataset(packed[0].out, "train")
    every_window = contents(ds[i] for i in range(len(ds)))
    n = len(ds)
    steps = -(-2 * n // (micro * world_size))  # a bit over two epochs
    per_rank = [list(itertools.islice(ds.iter_batches(micro, r, world_size, seed=3), steps))
                for r in range(world_size)]
    stream = []  # reassemble the global order: step by step, rank by rank
    for s in range(steps):
        batches = [per_rank[r][s][0] for r in range(world_size)]
        assert all(b.dtype == torch.int64 and b.shape == (micro, ds.seq_len) for b in batches)
        assert len({per_rank[r][s][1] for r in range(world_size)}) == 1  # same offset on all ranks
        assert per_rank[0][s][1] == (s + 1) * micro * world_size
        stream += [row.numpy() for b in batches for row in b]
    for epoch in range(2):
        assert contents(stream[epoch * n:(epoch + 1) * n]) == every_window, f"epoch {epoch}"
    assert not all(np.array_equal(a, b) for a, b in zip(stream[:n], stream[n:2 * n])), \
        "each epoch is reshuffled"
    # the same, by window index: the global order is a permutation per epoch
    order = ds.windows_at(np.arange(2 * n), seed=3)
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))


def test_resume_from_sample_offset(packed):  # noqa: F811
    ds = PackedDataset(packed[0].out, "train")
    full = list(itertools.islice(ds.iter_batches(6, rank=1, world_size=2, seed=11), 12))
    offset = full[4][1]  # a checkpoint after the 5th step stores this
    resumed = list(itertools.islice(ds.iter_batches(6, 1, 2, start_sample=offset, seed=11), 7))
    for (a, na), (b, nb) in zip(full[5:], resumed):
        assert torch.equal(a, b) and na == nb


def test_order_is_deterministic_by_seed(packed):  # noqa: F811
    out = packed[0].out
    a = next(PackedDataset(out).iter_batches(8, seed=1))[0]
    b = next(PackedDataset(out).iter_batches(8, seed=1))[0]
    c = next(PackedDataset(out).iter_batches(8, seed=2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_document_boundaries(packed):  # noqa: F811
    ds = PackedDataset(packed[0].out, "train")
    prev_last_eos = False
    for i in range(len(ds)):
        w, starts = ds[i], ds.doc_starts(i)
        after_eos = [p + 1 for p in np.flatnonzero(w == ds.eos_id) if p + 1 < ds.seq_len]
        expected = ([0] if (i == 0 or prev_last_eos) else []) + after_eos
        assert starts.tolist() == expected, i
        prev_last_eos = bool(w[-1] == ds.eos_id)
        doc_ids = ds.document_ids(i)
        assert doc_ids[0] == 0 and doc_ids[-1] == len([s for s in starts if s > 0])


def test_phases_stay_in_order(tmp_path, corpora):  # noqa: F811
    data_tmp, docs = corpora
    sources = {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": 0.5},
               "beta": {"path": str(data_tmp / "data/corpora/beta"), "weight": 0.5}}
    cfg = mix_config(tmp_path, sources, total_tokens=6000, seq_len=16, val_fraction=0.0,
                     phases=[{"until_tokens": 4000, "weights": {"alpha": 1.0}, "name": "web"},
                             {"until_tokens": 6000, "weights": {"beta": 1.0}, "name": "synthetic"}])
    b = build(cfg)
    ds = PackedDataset(b.out)
    phases = ds.index["phases"]
    assert [p["name"] for p in phases] == ["web", "synthetic"]
    cut = phases[0]["end_window"]
    assert abs(cut - 4000 // 16) <= 3
    tok = b.mix_info["tokenizer"]
    from phi_lib.data.tokenizer import load_tokenizer

    dec = load_tokenizer(tok, data_dir=cfg.run.data_dir).decode
    assert "beta" not in dec(np.concatenate([ds[i] for i in range(cut - 1)]).tolist())
    assert "alpha" not in dec(np.concatenate([ds[i] for i in range(cut + 1, len(ds))]).tolist())
    order = ds.order(epoch=0, seed=5)
    assert sorted(order[:cut]) == list(range(cut)) and sorted(order[cut:]) == list(range(cut, len(ds)))


def test_loader_errors_are_clear(tmp_path, packed):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="mix.json not found: stage 03"):
        PackedDataset(tmp_path)
    with pytest.raises(ValueError, match="rank 2 not in"):
        next(PackedDataset(packed[0].out).iter_batches(4, rank=2, world_size=2))
