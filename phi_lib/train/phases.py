"""The phases of stage 05: pretraining, then optionally the phi-1 CodeExercises finetune.

Steps are numbered globally: the finetune's first step is `train.max_steps + 1`, so its
checkpoints (`step-N` with N above the pretraining's) are the newest and the evaluation stage
picks the finetuned model, while the pretraining's last checkpoint (phi-1-base's analogue)
is kept as the finetune's starting point. Both phases read stage 03's files: the mixture
(`03_mix/`) and the finetune set it packed (`03_mix/finetune/`, from `mix.finetune`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi_lib.config import Config
from phi_lib.packed import FINETUNE_DIR, MIX_FILE
from phi_lib.stages import STAGES


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
                    tc.save_every, 0, tc.max_steps, STAGES["03"].dir(cfg), init)]
    ft = tc.finetune
    if ft.enabled:
        phases.append(Phase("finetune", ft.lr, ft.warmup_steps, ft.weight_decay,
                            ft.global_batch_size, ft.save_every, tc.max_steps, ft.max_steps,
                            finetune_data(cfg),
                            Path(out) / "checkpoints" / f"step-{tc.max_steps}"))
    return phases


def finetune_data(cfg: Config) -> Path:
    """The finetune set stage 03 packed (`03_mix/finetune/`); fails, naming the fix, if absent
    (checked before pretraining starts, not after it)."""
    folder = STAGES["03"].dir(cfg) / FINETUNE_DIR
    if not (folder / MIX_FILE).is_file():
        raise FileNotFoundError(
            f"train.finetune.enabled: the finetune set {folder} has not been packed: run stage 03 "
            f"with mix.finetune.source set (now {cfg.mix.finetune.source!r}), e.g. `python -m "
            f"phi_lib run <params> --stages 03`, before stage 05")
    return folder
