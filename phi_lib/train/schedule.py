"""Learning-rate schedules of the papers, as `transformers` implements them.

phi-1.5: constant 2e-4 with no warmup. phi-1: linear warmup (750 steps) then linear decay to
0 at the last step, peak 1e-3; its CodeExercises finetune: the same with warmup 50, peak
1e-4. `cosine` (warmup then half a cosine to 0) for ablations. The schedule is indexed by the
optimizer step of its phase, starting at 0 (the first update uses the lr of step 0).
"""
from __future__ import annotations

import torch
from transformers import get_scheduler

SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int,
                   max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over the optimizer's peak lr (`schedule` is constant/linear/cosine)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule: unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=max_steps)


def lr_at(step: int, *, schedule: str, lr: float, warmup_steps: int, max_steps: int) -> float:
    """The lr the schedule gives at (0-based) optimizer step `step`: for plots and tests."""
    param = torch.nn.Parameter(torch.zeros(1))
    sched = make_scheduler(torch.optim.SGD([param], lr=lr), schedule, warmup_steps, max_steps)
    return lr * sched.lr_lambdas[0](step)
