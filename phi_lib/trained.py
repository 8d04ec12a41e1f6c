"""Stage 05's hand-off: which of its checkpoints *is* the trained model.

Stage 05 ends by writing ``05_train/selected.json``: the checkpoint stages 06 and 07 mean by
the model name ``checkpoint``. Without a finetune it is the pretraining's last step; with the
phi-1 finetune it is the best finetune checkpoint by ``train.finetune.select_by`` (phi-1 kept
the best of its checkpoints saved every 1K steps). Readers call :func:`selected_checkpoint`
(through ``phi_lib.hf_models.resolve_model``); it lives here, top-level, so that they need
not import ``phi_lib.train`` (DESIGN.md: stages talk through files only).

    {"step": 48, "checkpoint": "checkpoints/step-48", "phase": "finetune",
     "select_by": "val_loss", "value": 2.71, "candidates": [{"step": 44, "val_loss": 2.9}, ...]}
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from phi_lib.io import atomic_write_json, read_json

SELECTED_FILE = "selected.json"
TRAIN_DIR = "05_train"
_STEP_DIR = re.compile(r"step-(\d+)")


def write_selected(stage_dir: Union[str, Path], record: dict) -> Path:
    """Write stage 05's choice (`record` has at least `step` and `checkpoint`, relative to the
    stage folder), atomically."""
    if "step" not in record or "checkpoint" not in record:
        raise ValueError(f"a selection needs `step` and `checkpoint`, got {sorted(record)}")
    path = Path(stage_dir) / SELECTED_FILE
    atomic_write_json(path, record)
    return path


def read_selected(run_dir: Union[str, Path]) -> Optional[dict]:
    """The selection stage 05 recorded in `run_dir`, or None if it has not written one."""
    path = Path(run_dir) / TRAIN_DIR / SELECTED_FILE
    return read_json(path) if path.is_file() else None


def latest_checkpoint(run_dir: Union[str, Path]) -> Path:
    """The highest `step-N` checkpoint (with a config.json) of a run's stage 05."""
    ckpts = Path(run_dir) / TRAIN_DIR / "checkpoints"
    steps = []
    for d in ckpts.glob("step-*"):
        m = _STEP_DIR.fullmatch(d.name)
        if m and (d / "config.json").is_file():
            steps.append((int(m.group(1)), d))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {ckpts} (run stage 05 first)")
    return max(steps)[1]


def selected_checkpoint(run_dir: Union[str, Path]) -> Path:
    """The checkpoint stage 05 selected; before it has selected one (mid-training, or a run
    folder older than the selection), its latest checkpoint."""
    sel = read_selected(run_dir)
    if sel is None:
        return latest_checkpoint(run_dir)
    path = Path(run_dir) / TRAIN_DIR / sel["checkpoint"]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{Path(run_dir) / TRAIN_DIR / SELECTED_FILE} selects {sel['checkpoint']}, which is "
            f"not a complete checkpoint: rerun stage 05 (python -m phi_lib run <params> --stages 05)")
    return path
