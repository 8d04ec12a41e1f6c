"""What the full run costs: per-GPU memory under ZeRO 0-3 and projected wall time.

Memory comes from `phi_lib.model.planning.memory_per_gpu` (weights, gradients, Adam states
and activations, as the ZeRO paper partitions them). The time projection turns an MFU into
tokens/s per GPU (MFU x peak / model FLOPs per token) and then into wall hours and
GPU-hours for `train.plan_tokens` (phi-1.5: 150B) on N GPUs of `train.plan_gpu`, for up to
three MFUs side by side (the `mfu_basis` column says which each is):

- `measured`: this run's, only when it was measured on the kind of GPU the plan is for. An
  MFU is a property of a model on a device: a CPU's "22%" (of what its matmul reaches) says
  nothing about an A100, so a run measured elsewhere falls back to the anchors below.
- `published anchor`: MPT-1.3B's (59.9% on A100, 41.8% on H100, bf16, seq 2048).
- `paper implied`: what the paper's reported GPU-hours would need (phi-1.5: over 80%, doubtful).

The planned model is `plan_model(cfg)`: the configured one, or phi-1.5 for the smoke presets.
"""
from __future__ import annotations

from typing import Optional

from phi_lib.config import Config
from phi_lib.io import save_figure
from phi_lib.train.mfu import GPU_PEAK_TFLOPS

MPT_MFU = {"A100": 0.599, "H100": 0.418}
"""MPT-1.3B's published MFU at seq 2048, bf16 (llm-foundry throughput table)."""
SMOKE_STANDS_IN_FOR = "phi-1.5"
"""The model a smoke preset's plan is for (the smoke's plan_tokens / paper_gpu_hours are its)."""


def plan_model(cfg: Config):
    """The architecture the plan is for: `model.plan_preset`, else the configured model (its
    overrides included), else phi-1.5 for a smoke preset (`*-tiny`)."""
    from phi_lib.model import PhiConfig

    mc = cfg.model
    if mc.plan_preset is not None:
        return PhiConfig.from_preset(mc.plan_preset)
    if mc.preset.endswith("-tiny"):
        return PhiConfig.from_preset(SMOKE_STANDS_IN_FOR)
    return PhiConfig.from_model_config(mc)


def plan_seq_len(cfg: Config, model=None) -> int:
    """`model.plan_seq_len`, else the planned model's context."""
    return cfg.model.plan_seq_len or (model or plan_model(cfg)).max_position_embeddings


def memory_table(cfg: Config, n_gpus: Optional[int] = None, micro_batch_size: Optional[int] = None):
    """GB per GPU of the planned model for ZeRO 0-3 x fp16/bf16 (a DataFrame)."""
    import pandas as pd

    from phi_lib.model.planning import memory_per_gpu

    config = plan_model(cfg)
    seq_len = plan_seq_len(cfg, config)
    n = n_gpus or cfg.train.plan_gpus[0]
    mb = micro_batch_size or cfg.train.micro_batch_size
    rows = []
    for zero in (0, 1, 2, 3):
        for precision in ("fp16", "bf16"):
            mem = memory_per_gpu(config, zero, precision, n, mb, seq_len)
            rows.append({"zero_stage": zero, "precision": precision, "gpus": n, "micro_batch": mb,
                         "seq_len": seq_len, **{k: round(float(v), 2) for k, v in mem.items()}})
    return pd.DataFrame(rows).set_index(["zero_stage", "precision"])


def implied_mfu(cfg: Config) -> Optional[float]:
    """The MFU the paper's GPU-hours would need on `plan_gpu` (None when none are published)."""
    if cfg.train.paper_gpu_hours is None:
        return None
    from phi_lib.model.planning import flops_per_token

    model = plan_model(cfg)
    tps = cfg.train.plan_tokens / (cfg.train.paper_gpu_hours * 3600)
    fpt = flops_per_token(model, plan_seq_len(cfg, model))
    return tps * fpt / (GPU_PEAK_TFLOPS[cfg.train.plan_gpu][0] * 1e12)


def mfu_sources(cfg: Config, measured_mfu: Optional[float],
                measured_on: Optional[str]) -> list[tuple[str, str, float]]:
    """(label, basis, MFU) rows of the projection; a measured MFU only if `measured_on` is
    the plan's GPU kind (`phi_lib.train.mfu.device_kind`), else a label says why it is not."""
    gpu = cfg.train.plan_gpu
    anchor = f"MPT-1.3B on {gpu} ({MPT_MFU[gpu]:.1%}, published anchor)"
    rows = []
    if measured_mfu and measured_on == gpu:
        rows.append((f"measured here on {gpu} ({measured_mfu:.1%})", "measured", measured_mfu))
    elif measured_mfu:
        anchor += f"; the {measured_mfu:.1%} measured on {measured_on or 'an unrecorded device'} is not a {gpu} figure"
    rows.append((anchor, "published anchor", MPT_MFU[gpu]))
    implied = implied_mfu(cfg)
    if implied is not None:
        rows.append((f"paper's {cfg.train.paper_gpu_hours:,.0f} GPU-h imply ({implied:.1%})",
                     "paper implied", implied))
    return rows


def projection(cfg: Config, measured_mfu: Optional[float], measured_on: Optional[str] = None,
               gpus: Optional[list[int]] = None):
    """Wall time and GPU-hours of `plan_tokens` tokens on N GPUs of `plan_gpu`, per MFU source
    (`mfu_sources`); `measured_on` is the device kind `measured_mfu` came from."""
    import pandas as pd

    from phi_lib.model.planning import flops_per_token

    tc = cfg.train
    model = plan_model(cfg)
    fpt = flops_per_token(model, plan_seq_len(cfg, model))
    peak = GPU_PEAK_TFLOPS[tc.plan_gpu][0] * 1e12
    rows = []
    for name, basis, m in mfu_sources(cfg, measured_mfu, measured_on):
        tps = m * peak / fpt
        for n in gpus or tc.plan_gpus:
            hours = tc.plan_tokens / (tps * n) / 3600
            rows.append({"mfu_source": name, "mfu_basis": basis, "mfu": round(m, 4),
                         "model": model.name, "gpus": n, "tokens_per_s_per_gpu": round(tps),
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
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    model = table["model"].iloc[0] if len(table) else ""
    ax.set_xlabel(f"{cfg.train.plan_gpu}-hours for {model} on {cfg.train.plan_tokens / 1e9:,.0f}B "
                  "tokens (log)")
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig
