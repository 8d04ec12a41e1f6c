"""The phases of stage 05: pretraining, then optionally the phi-1 CodeExercises finetune.

Steps are numbered globally: the finetune's first step is `train.max_steps + 1`, so its
checkpoints (`step-N` with N above the pretraining's) are the newest and the evaluation stage
picks the finetuned model, while the pretraining's last checkpoint (phi-1-base's analogue)
is kept as the finetune's starting point.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi_lib.config import Config, SourceConfig

FINETUNE_DATA = "finetune_data"


@dataclass
class Phase:
    name: str
    """`pretrain` or `finetune`."""
    lr: float
    warmup_steps: int
    weight_decay: float
    global_batch_size: int
    save_every: int
    offset: int
    """Global step before the phase's first step."""
    steps: int
    data_dir: Path
    """A packed mixture dir (`03_mix/` layout) with train (and val) splits."""
    init_from: Optional[Path] = None
    """Checkpoint whose weights start the phase (None = random init)."""

    @property
    def last_step(self) -> int:
        return self.offset + self.steps


def plan_phases(cfg: Config, out: Path) -> list[Phase]:
    tc = cfg.train
    init = Path(tc.init_from) if tc.init_from else None
    phases = [Phase("pretrain", tc.lr, tc.warmup_steps, tc.weight_decay, tc.global_batch_size,
                    tc.save_every, 0, tc.max_steps, cfg.run_dir / "03_mix", init)]
    ft = tc.finetune
    if ft.enabled:
        phases.append(Phase("finetune", ft.lr, ft.warmup_steps, ft.weight_decay,
                            ft.global_batch_size, ft.save_every, tc.max_steps, ft.max_steps,
                            Path(out) / FINETUNE_DATA,
                            Path(out) / "checkpoints" / f"step-{tc.max_steps}"))
    return phases


def finetune_mix_config(cfg: Config) -> Config:
    """The config that packs the finetune documents as stage 03 would: same tokenizer,
    seq_len and seed, one source, enough tokens for `finetune.max_steps` steps."""
    ft = cfg.train.finetune
    sub = copy.deepcopy(cfg)
    src = cfg.mix.sources.get(ft.source)
    src = copy.deepcopy(src) if src is not None else SourceConfig(path=ft.source)
    src.weight = 1.0
    sub.mix.sources = {"finetune": src}
    sub.mix.phases = []
    sub.mix.total_tokens = ft.max_steps * ft.global_batch_size * cfg.mix.seq_len
    sub.mix.val_fraction = max(cfg.mix.val_fraction, 0.01)
    sub.mix.max_epochs_warning = float("inf")  # a finetune repeats its small set by design
    return sub


def prepare_finetune_data(cfg: Config, out: Path, progress: bool = True) -> Optional[Path]:
    """Pack the finetune documents into `05_train/finetune_data/` (resumable, once)."""
    if not cfg.train.finetune.enabled:
        return None
    from phi_lib.data import MixBuilder  # the stage-03 packer: one tokenization/packing code

    folder = Path(out) / FINETUNE_DATA
    if (folder / "mix.json").is_file():
        return folder
    builder = MixBuilder(finetune_mix_config(cfg), folder, progress=progress)
    builder.tokenize()
    builder.plan()
    builder.pack()
    return folder
