"""Stage 03: data mixing, tokenization and packing (phi-1.5 sec. 2, phi-3 phases).

    from phi_lib.data import MixBuilder, PackedDataset, plan_mixture, to_hf_dataset

Modules: `sources` (where documents come from), `tokenize` (resumable multi-process token
caches), `mixture` (tokens and epochs per source), `pack` (windows and shards), `hf` (the
packed output as a `datasets.Dataset`), `image_text` (phi-3-vision's image-text records; their
format and reader: the top-level `phi_lib.image_text`), `build` (the stage, step by step). The packed format
and its reader `PackedDataset` live in the top-level `phi_lib.packed` (stage 05 reads it).
`tokenizer` (the phi tokenizers: codegen, phi-3-mini, phi-3-small) is shared with other stages.
Names are imported lazily so `import phi_lib.data.tokenizer` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MixBuilder": "phi_lib.data.build",
    "PackedDataset": "phi_lib.packed",  # the format is shared (top-level); re-exported here
    "plan_mixture": "phi_lib.data.mixture",
    "MixturePlan": "phi_lib.data.mixture",
    "MixtureWarning": "phi_lib.data.mixture",
    "to_hf_dataset": "phi_lib.data.hf",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phi_lib.data' has no attribute {name!r}")
