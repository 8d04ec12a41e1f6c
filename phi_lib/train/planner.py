"""What the full run costs: per-GPU memory under ZeRO 0-3 and projected wall time.

Memory comes from `phi_lib.model.planning.memory_per_gpu` (weights, gradients, Adam states
and activations, as the ZeRO paper partitions them). The time projection turns an MFU into
tokens/s per GPU (MFU x peak / model FLOPs per token) and then into wall hours and
GPU-hours for `train.plan_tokens` (phi-1.5: 150B) on N GPUs, for three MFUs side by side:
ours as measured, the MPT-1.3B anchor (59.9% on A100, 41.8% on H100, bf16, seq 2048), and
the one phi-1.5's reported 1.5K A100-hours would imply (over 80%: doubtful).
"""
from __future__ import annotations

from typing import Optional

from phi_lib.config import Config
from phi_lib.io import save_figure
from phi_lib.train.mfu import GPU_PEAK_TFLOPS

MPT_MFU = {"A100": 0.599, "H100": 0.418}
"""MPT-1.3B's published MFU at seq 2048, bf16 (llm-foundry throughput table)."""


def _model(preset: str):
    from phi_lib.model import PhiConfig

    return PhiConfig.from_preset(preset)


def memory_table(cfg: Config, preset: str = "phi-1.5", n_gpus: Optional[int] = None,
                 seq_len: int = 2048, micro_batch_size: Optional[int] = None):
    """GB per GPU of `preset` for ZeRO 0-3 x fp16/bf16 (a DataFrame)."""
    import pandas as pd

    from phi_lib.model.planning import memory_per_gpu

    config = _model(preset)
    n = n_gpus or cfg.train.plan_gpus[0]
    mb = micro_batch_size or cfg.train.micro_batch_size
    rows = []
    for zero in (0, 1, 2, 3):
        for precision in ("fp16", "bf16"):
            mem = memory_per_gpu(config, zero, precision, n, mb, seq_len)
            rows.append({"zero_stage": zero, "precision": precision, "gpus": n,
                         "micro_batch": mb, **{k: round(float(v), 2) for k, v in mem.items()}})
    return pd.DataFrame(rows).set_index(["zero_stage", "precision"])


def implied_mfu(cfg: Config, preset: str = "phi-1.5", seq_len: int = 2048) -> Optional[float]:
    """The MFU the paper's GPU-hours would need on `plan_gpu` (None when none are published)."""
    if cfg.train.paper_gpu_hours is None:
        return None
    from phi_lib.model.planning import flops_per_token

    tps = cfg.train.plan_tokens / (cfg.train.paper_gpu_hours * 3600)
    return tps * flops_per_token(_model(preset), seq_len) / (GPU_PEAK_TFLOPS[cfg.train.plan_gpu][0] * 1e12)


def projection(cfg: Config, measured_mfu: Optional[float], preset: str = "phi-1.5",
               seq_len: int = 2048, gpus: Optional[list[int]] = None):
    """Wall time and GPU-hours of `plan_tokens` tokens on N GPUs, per MFU source."""
    import pandas as pd

    from phi_lib.model.planning import flops_per_token

    tc = cfg.train
    fpt = flops_per_token(_model(preset), seq_len)
    peak = GPU_PEAK_TFLOPS[tc.plan_gpu][0] * 1e12
    implied = implied_mfu(cfg, preset, seq_len)
    sources = {f"measured here ({measured_mfu:.1%})" if measured_mfu else "measured here": measured_mfu,
               f"MPT-1.3B on {tc.plan_gpu} ({MPT_MFU[tc.plan_gpu]:.1%})": MPT_MFU[tc.plan_gpu]}
    if implied is not None:
        sources[f"paper's {tc.paper_gpu_hours:,.0f} GPU-h imply ({implied:.1%})"] = implied
    rows = []
    for name, m in sources.items():
        if not m:
            continue
        tps = m * peak / fpt
        for n in gpus or tc.plan_gpus:
            hours = tc.plan_tokens / (tps * n) / 3600
            rows.append({"mfu_source": name, "gpus": n, "tokens_per_s_per_gpu": round(tps),
                         "wall_days": round(hours / 24, 2), "gpu_hours": round(hours * n),
                         "x_paper_gpu_hours": round(hours * n / tc.paper_gpu_hours, 2)
                         if tc.paper_gpu_hours else None})
    return pd.DataFrame(rows)


def plot_projection(table, cfg: Config, save=None):
    """GPU-hours per MFU source against the paper's figure (GPU-hours do not depend on N)."""
    import matplotlib.pyplot as plt

    per_source = table.groupby("mfu_source", sort=False)["gpu_hours"].first()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(per_source.index, per_source.values, color="#4C72B0")
    if cfg.train.paper_gpu_hours is not None:
        ax.axvline(cfg.train.paper_gpu_hours, color="crimson", ls="--",
                   label=f"paper: {cfg.train.paper_gpu_hours:,.0f} {cfg.train.plan_gpu}-hours")
    ax.set_xscale("log")
    ax.set_xlabel(f"{cfg.train.plan_gpu}-hours for {cfg.train.plan_tokens / 1e9:,.0f}B tokens (log)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig
