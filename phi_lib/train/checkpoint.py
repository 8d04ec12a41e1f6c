"""Checkpoints: `05_train/checkpoints/step-N/`, each a complete Hugging Face model dir.

    step-N/config.json, model.safetensors   the weights (fp32), loadable by transformers
    step-N/trainer_state.json               step, phase, data position, tokens, last metrics,
                                            the fingerprint of what made it (train.fingerprint)
    step-N/training_state.pt                optimizer, scheduler, loss scaler (single process)
    step-N/deepspeed/                       DeepSpeed's own optimizer shards (distributed)
    step-N/rng_rank{R}.pt                   each rank's RNG states (dropout replays exactly)

A checkpoint is written into `.step-N.tmp/` and renamed when complete, so a kill -9 midway
leaves the previous checkpoints intact and no half-written `step-N` for the evaluation stage
to pick up (it loads the one stage 05 selected: `phi_lib.trained.selected_checkpoint`).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from phi_lib.io import atomic_write_json, read_json

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def step_dir(ckpt_root: Path, step: int) -> Path:
    return Path(ckpt_root) / f"step-{step}"


def tmp_dir(ckpt_root: Path, step: int) -> Path:
    return Path(ckpt_root) / f".step-{step}.tmp"


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), by step."""
    out = []
    root = Path(ckpt_root)
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.fullmatch(d.name)
            if m and (d / STATE_FILE).is_file() and (d / "config.json").is_file():
                out.append((int(m.group(1)), d))
    return sorted(out)


def latest(ckpt_root: Path) -> Optional[Path]:
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1][1] if ckpts else None


def read_state(ckpt: Path) -> dict:
    return read_json(Path(ckpt) / STATE_FILE)


def clean_partial(ckpt_root: Path) -> None:
    """Remove half-written `.step-N.tmp/` dirs left by a killed run."""
    root = Path(ckpt_root)
    if root.is_dir():
        for d in root.glob(".step-*.tmp"):
            shutil.rmtree(d, ignore_errors=True)


def finalize(ckpt_root: Path, step: int, state: dict) -> Path:
    """Write trainer_state.json last, then rename `.step-N.tmp` to `step-N` (atomic)."""
    tmp, final = tmp_dir(ckpt_root, step), step_dir(ckpt_root, step)
    atomic_write_json(tmp / STATE_FILE, state)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(Path(ckpt_root))
    return final


def prune(ckpt_root: Path, keep_last: int, protect: tuple[int, ...] = ()) -> list[int]:
    """Delete all but the last `keep_last` checkpoints (and the `protect`ed steps)."""
    ckpts = list_checkpoints(ckpt_root)
    removed = []
    for step, d in ckpts[:-keep_last] if keep_last > 0 else []:
        if step not in protect:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(step)
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- weights
def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The state dict of an HF checkpoint dir (single or sharded safetensors)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    single = ckpt / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(ckpt / f))
        return out
    raise FileNotFoundError(f"{ckpt}: no model.safetensors (not a Hugging Face checkpoint dir)")


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), Path(folder) / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> bool:
    path = Path(folder) / f"rng_rank{rank}.pt"
    if not path.is_file():
        return False  # resumed with more ranks than saved: the new ranks keep their seed
    set_rng_state(torch.load(path, weights_only=False))
    return True
