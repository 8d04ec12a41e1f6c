"""Stage 05: training (phi-1.5: Adam, constant 2e-4, fp16 DeepSpeed ZeRO-2; phi-1: AdamW,
warmup + linear decay, stopped at 24K of 36K steps (phi-1-base), then the CodeExercises
finetune and the best of its checkpoints).

    stage = TrainStage(cfg, out)              # what notebook 05 runs, one verb per cell
    stage.prepare(); stage.launch(); stage.summarize(); stage.plots(); stage.projection()
    manifest = stage.write_manifest()

Modules: `stage` (the stage contract), `loop` (what each process runs), `engines`
(single-process torch AMP / DeepSpeed), `schedule`, `optim`, `checkpoint` (HF format +
optimizer/RNG/data position, atomic), `fingerprint` (what made a checkpoint; may training
resume from it), `select` (which checkpoint is the model), `deepspeed_config`, `launcher`,
`metrics`, `mfu`, `planner`, `plots`, `phases`, `errors`.
Names are imported lazily: `python -m phi_lib.train` should not pay for matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainStage": "phi_lib.train.stage", "prepare": "phi_lib.train.launcher", "launch": "phi_lib.train.launcher",
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
