"""The one call at the top of every stage notebook.

    cfg, out = phi_lib.notebook.setup(params, overrides, run_dir, stage="03")

loads and validates the params (with the notebook's overrides), fixes the seed, points the
stage at its output folder (``<run_dir>/<NN_stage>/``) and sets up inline plots.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from phi_lib.config import Config, load
from phi_lib.stages import STAGES


def setup(params: str, overrides: Optional[dict], run_dir: Optional[str],
          stage: str) -> tuple[Config, Path]:
    cfg = load(params, overrides or {})
    if run_dir:  # the runner passes the run folder; interactive use derives it from the config
        run_dir = Path(run_dir)
        cfg.run.output_root, cfg.run.name = str(run_dir.parent.resolve()), run_dir.name
    seed_everything(cfg.run.seed)
    out = STAGES[stage].dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.rcParams["figure.dpi"] = 100
    except ImportError:
        pass
    print(f"stage {STAGES[stage].dirname} | run {cfg.run.name} | hash "
          f"{STAGES[stage].config_hash(cfg)} | outputs -> {out}")
    return cfg, out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
