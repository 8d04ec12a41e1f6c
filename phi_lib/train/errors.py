"""Failures of a training run, told plainly, with the last good checkpoint named.

The training process writes `05_train/errors/rank{R}.json` before it exits; the launcher
reads them and raises `TrainError` with the clearest one (NaN or OOM before a rank that only
saw its peers vanish).
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Optional

from phi_lib.io import atomic_write_json

ERRORS_DIR = "errors"
_PRIORITY = {"stale": 0, "nan": 0, "oom": 1, "config": 2, "error": 3}


class TrainError(RuntimeError):
    """A training run failed; the message says why and which checkpoint is intact."""


class LaunchError(TrainError):
    """The launch itself failed (unreachable host, bad hostfile, missing launcher)."""


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf: training stops before saving anything from this state."""

    def __init__(self, step: int, loss: float, last_good: Optional[Path]):
        self.step, self.loss, self.last_good = step, loss, last_good
        super().__init__(
            f"non-finite loss ({loss}) at step {step}: training stopped before saving. Last good "
            f"checkpoint: {last_good or 'none yet'} (untouched). Lower train.lr, raise "
            "train.warmup_steps, check the data, or use bf16 (fp16 overflows past 65504).")


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator failing (`DefaultCPUAllocator: can't allocate memory`)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError))


def describe(exc: BaseException, micro_batch_size: int, last_good: Optional[Path]) -> dict:
    """{kind, message} for an exception raised by a training process."""
    from phi_lib.provenance import StaleArtifact

    where = f"Last good checkpoint: {last_good or 'none yet'} (untouched)."
    if isinstance(exc, StaleArtifact):  # found before any work: its message says what to do
        return {"kind": "stale", "message": str(exc)}
    if isinstance(exc, NonFiniteLoss):
        return {"kind": "nan", "message": str(exc)}
    if is_oom(exc):
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return {"kind": "oom", "message": (
            f"out of memory with train.micro_batch_size={micro_batch_size} ({first}). Lower "
            "micro_batch_size (accumulation keeps the global batch), use bf16/fp16, a higher "
            f"ZeRO stage or more GPUs. {where}")}
    return {"kind": "error", "message": f"{type(exc).__name__}: {exc}. {where}",
            "traceback": traceback.format_exc()}


def write_error(out: Path, rank: int, info: dict) -> None:
    atomic_write_json(Path(out) / ERRORS_DIR / f"rank{rank}.json", {"rank": rank, **info})


def read_errors(out: Path) -> list[dict]:
    """Errors written by the ranks of the last launch, clearest first."""
    folder = Path(out) / ERRORS_DIR
    errs = []
    for f in sorted(folder.glob("rank*.json")) if folder.is_dir() else []:
        try:
            errs.append(json.loads(f.read_text()))
        except ValueError:
            continue
    return sorted(errs, key=lambda e: _PRIORITY.get(e.get("kind"), 9))
