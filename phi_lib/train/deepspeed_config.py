"""The DeepSpeed JSON, generated from `cfg.train` and written next to the run.

ZeRO stage (the papers: 2), fp16 dynamic loss scaling (initial 2**16, window, hysteresis,
floor) or bf16, bucket sizes and communication overlap, clipping, and the batch arithmetic:
global batch = micro batch x accumulation steps x processes. The optimizer and schedule are
ours (torch Adam/AdamW + the papers' schedules), handed to `deepspeed.initialize`.
"""
from __future__ import annotations

from pathlib import Path

from phi_lib.config import TrainConfig
from phi_lib.io import atomic_write_json


def accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(f"train.global_batch_size={global_batch_size} is not a multiple of "
                         f"micro_batch_size x processes = {micro_batch_size} x {world_size}")
    return global_batch_size // per_step


def ds_config(tc: TrainConfig, global_batch_size: int | None = None,
              world_size: int | None = None) -> dict:
    """The DeepSpeed config dict for a phase with this global batch on `world_size` ranks."""
    gbs = global_batch_size or tc.global_batch_size
    world = world_size or tc.world_size
    cfg: dict = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": tc.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(gbs, tc.micro_batch_size, world),
        "gradient_clipping": tc.grad_clip,
        "zero_optimization": {
            "stage": tc.zero_stage,
            "overlap_comm": tc.overlap_comm,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": tc.reduce_bucket_size,
            "allgather_bucket_size": tc.allgather_bucket_size,
        },
        # our torch Adam/AdamW is not in DeepSpeed's tested list; ZeRO-2 partitions any
        # torch optimizer's state correctly
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if tc.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0,  # 0 = dynamic
                       "initial_scale_power": tc.initial_scale_power,
                       "loss_scale_window": tc.loss_scale_window,
                       "hysteresis": tc.hysteresis, "min_loss_scale": tc.min_loss_scale}
    elif tc.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def write_ds_config(tc: TrainConfig, path: Path, **kwargs) -> dict:
    cfg = ds_config(tc, **kwargs)
    atomic_write_json(path, cfg)
    return cfg
