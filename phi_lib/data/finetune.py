"""The finetune set (`mix.finetune`) as a packed mixture of its own, in `03_mix/finetune/`.

phi-1 finetuned its pretrained model on CodeExercises (<180M tokens, 6K steps of 256
sequences). Stage 03 packs that set with the mixture's tokenizer, `seq_len` and seed, so
stage 05 reads both of its datasets from stage 03's files (DESIGN.md: stages talk through
files only) and the tokenization/packing code exists once.
"""
from __future__ import annotations

import copy

from phi_lib.config import Config, MixFinetuneConfig, SourceConfig

FINETUNE_SOURCE = "finetune"
"""Name of the finetune set's source when it is a path rather than a name in `mix.sources`."""


def finetune_config(cfg: Config) -> Config:
    """`cfg` with `mix` rewritten to pack the finetune set: one source (a `mix.sources` entry
    keeps its name, so its token cache is shared), one phase, the `mix.finetune` budget."""
    ft = cfg.mix.finetune
    if ft.source is None:
        raise ValueError("mix.finetune.source is not set: there is no finetune set to pack")
    sub = copy.deepcopy(cfg)
    src = cfg.mix.sources.get(ft.source)
    name = ft.source if src is not None else FINETUNE_SOURCE
    src = copy.deepcopy(src) if src is not None else SourceConfig(path=ft.source)
    src.weight = 1.0
    sub.mix.sources = {name: src}
    sub.mix.phases = []
    sub.mix.total_tokens = cfg.finetune_tokens()
    sub.mix.val_fraction = max(cfg.mix.val_fraction, 0.01)  # a finetune curve needs a val loss
    sub.mix.max_epochs_warning = float("inf")  # a finetune repeats its small set by design
    sub.mix.finetune = MixFinetuneConfig()
    return sub


def is_mix_source(cfg: Config) -> bool:
    """Whether `mix.finetune.source` names an entry of `mix.sources` (else it is a path)."""
    return cfg.mix.finetune.source in cfg.mix.sources
