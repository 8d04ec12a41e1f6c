"""The phases of stage 05: pretraining, then optionally the phi-1 CodeExercises finetune.

phi-1 is a finetune of phi-1-base, and phi-1-base is the 24K-step checkpoint of a 36K-step
run: the pretraining's schedule runs over `train.max_steps` (36K) while it may stop earlier,
at `train.stop_at` (24K), and the finetune starts from the pretraining checkpoint of
`train.finetune.from_step` (default: the pretraining's last step).

Steps are numbered globally: the finetune's first step is the pretraining's last + 1, so its
checkpoints (`step-N` with N above the pretraining's) are the newest, while the finetune's
start checkpoint is kept. Which checkpoint is *the* model is stage 05's selection
(phi_lib.train.select, `05_train/selected.json`). Both phases read stage 03's files: the
mixture (`03_mix/`) and the finetune set it packed (`03_mix/finetune/`, from `mix.finetune`).
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
    """Checkpoint every N steps of the phase (counted from its first step)."""
    offset: int
    """Global step before the phase's first step."""
    steps: int
    """Steps the phase trains."""
    schedule_steps: int
    """Steps its lr schedule runs over (more than `steps` when it stops early: phi-1-base)."""
    data_dir: Path
    """A packed mixture dir (`03_mix/` layout) with train (and val) splits."""
    init_from: Optional[Path] = None
    """Checkpoint whose weights start the phase (None = random init)."""
    extra_saves: tuple[int, ...] = ()
    """Global steps saved whatever `save_every` says (the finetune's start)."""

    @property
    def last_step(self) -> int:
        return self.offset + self.steps

    def saves_at(self, step: int) -> bool:
        return (step - self.offset) % self.save_every == 0 or step == self.last_step \
            or step in self.extra_saves


def plan_phases(cfg: Config, out: Path) -> list[Phase]:
    tc = cfg.train
    init = Path(tc.init_from) if tc.init_from else None
    ft = tc.finetune
    start = (tc.finetune_start,) if ft.enabled else ()
    phases = [Phase("pretrain", tc.lr, tc.warmup_steps, tc.weight_decay, tc.global_batch_size,
                    tc.save_every, 0, tc.pretrain_steps, tc.max_steps, STAGES["03"].dir(cfg),
                    init, start)]
    if ft.enabled:
        phases.append(Phase("finetune", ft.lr, ft.warmup_steps, ft.weight_decay,
                            ft.global_batch_size, ft.save_every, tc.pretrain_steps, ft.max_steps,
                            ft.max_steps, finetune_data(cfg),
                            Path(out) / "checkpoints" / f"step-{tc.finetune_start}"))
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
