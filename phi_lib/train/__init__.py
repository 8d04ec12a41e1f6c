"""Stage 05: training (phi-1.5: Adam, constant 2e-4, fp16 DeepSpeed ZeRO-2; phi-1: AdamW,
warmup + linear decay, then the CodeExercises finetune).

    files = prepare(cfg, out)                 # resolved config + DeepSpeed JSON
    result = launch(cfg, out)                 # the launcher as a subprocess, log streamed
    summary = summarize(out)                  # final losses, tokens/s, MFU, the curves

Modules: `loop` (what each process runs), `engines` (single-process torch AMP / DeepSpeed),
`schedule`, `optim`, `checkpoint` (HF format + optimizer/RNG/data position, atomic),
`deepspeed_config`, `launcher`, `metrics`, `mfu`, `planner`, `plots`, `phases`, `errors`.
Names are imported lazily: `python -m phi_lib.train` should not pay for matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "prepare": "phi_lib.train.launcher", "launch": "phi_lib.train.launcher",
    "command": "phi_lib.train.launcher", "commands": "phi_lib.train.launcher",
    "Trainer": "phi_lib.train.loop", "summarize": "phi_lib.train.summary",
    "plot_metrics": "phi_lib.train.plots", "LivePlot": "phi_lib.train.plots",
    "read_metrics": "phi_lib.train.metrics", "ds_config": "phi_lib.train.deepspeed_config",
    "lr_at": "phi_lib.train.schedule", "memory_table": "phi_lib.train.planner",
    "projection": "phi_lib.train.planner", "plot_projection": "phi_lib.train.planner",
    "TrainError": "phi_lib.train.errors", "LaunchError": "phi_lib.train.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phi_lib.train' has no attribute {name!r}")
