"""The stage's manifest numbers, from metrics.jsonl and the checkpoints."""
from __future__ import annotations

from pathlib import Path

from phi_lib.train import checkpoint as ckpt
from phi_lib.train.metrics import last_value, read_metrics


def summarize(out: Path, skip_first: int = 1) -> dict:
    """{metrics, counts, last_checkpoint} for the manifest: final train/val loss, tokens/s
    and MFU (mean over logged windows, the first `skip_first` excluded as warm-up)."""
    out = Path(out)
    records = read_metrics(out / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"{out / 'metrics.jsonl'} is empty: training has not run")
    speed = [r for r in records if r.get("tokens_per_s") is not None]
    steady = speed[skip_first:] or speed
    ckpts = ckpt.list_checkpoints(out / "checkpoints")
    metrics = {
        "final_train_loss": last_value(records, "train_loss"),
        "final_val_loss": last_value(records, "val_loss"),
        "first_train_loss": next((r["train_loss"] for r in records if r.get("train_loss") is not None), None),
        "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady) if steady else None,
        "mfu": sum(r["mfu"] for r in steady) / len(steady) if steady else None,
        "steps": records[-1]["step"],
    }
    # each phase counts its tokens from 0 (pretrain, then the finetune): the run's total is
    # the sum of each phase's last count
    phase_tokens = {}
    for phase in dict.fromkeys(r.get("phase") for r in records):
        rs = [r for r in records if r.get("phase") == phase]
        phase_tokens[phase] = last_value(rs, "tokens") or 0
        if phase != "pretrain" and phase is not None:
            metrics[f"{phase}_final_train_loss"] = last_value(rs, "train_loss")
            metrics[f"{phase}_final_val_loss"] = last_value(rs, "val_loss")
            metrics[f"{phase}_tokens"] = phase_tokens[phase]
    metrics["tokens"] = sum(phase_tokens.values()) or None
    counts = {"checkpoints": len(ckpts), "skipped_steps": last_value(records, "skipped_steps") or 0,
              "logged_steps": len(records)}
    return {"metrics": {k: v for k, v in metrics.items() if v is not None}, "counts": counts,
            "last_checkpoint": str(ckpts[-1][1]) if ckpts else None}
