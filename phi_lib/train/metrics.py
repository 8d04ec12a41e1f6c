"""Training metrics: one JSON line per logged step (`metrics.jsonl`) plus TensorBoard.

On resume the lines after the checkpoint's step (written by the killed run) are dropped and
TensorBoard purges its events after that step too, so both show one clean curve.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from phi_lib.io import atomic_write_text


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl (a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only the line being written at a kill -9 can be torn
    return out


class MetricsLog:
    """Appends records to `<dir>/metrics.jsonl` and TensorBoard scalars (rank 0 only)."""

    def __init__(self, folder: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(folder) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and v is not None:
                    self.tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_"))
                                       else k, v, record["step"])

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def last_value(records: list[dict], key: str) -> Optional[float]:
    for r in reversed(records):
        if r.get(key) is not None:
            return r[key]
    return None
