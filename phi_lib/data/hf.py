"""The packed mixture as a `datasets.Dataset` (for Trainer, accelerate or anything HF).

Zero-copy: the arrow column is built over the memory-mapped shards, so nothing is
duplicated on disk; `input_ids` is a fixed-length list of `seq_len` tokens in the stored dtype
(uint16, or uint32 for vocabularies past 65,536 ids).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union


def to_hf_dataset(mix_dir: Union[str, Path], split: str = "train"):
    """`datasets.Dataset` with one row per window: `input_ids` (seq_len,) uint16 or uint32."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    from phi_lib.packed import PackedDataset

    ds = PackedDataset(mix_dir, split)
    chunks = [pa.FixedSizeListArray.from_arrays(pa.array(shard.reshape(-1)), ds.seq_len)
              for shard in ds._shards]
    column = pa.chunked_array(chunks, type=pa.list_(pa.from_numpy_dtype(ds.dtype), ds.seq_len))
    table = pa.table({"input_ids": column})
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value(ds.dtype.name),
                                                                 length=ds.seq_len)})
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features),
                            split=split)
