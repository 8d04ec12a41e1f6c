"""Which checkpoint is the trained model: stage 05's selection, handed to stages 06 and 07.

Without a finetune it is the pretraining's last step (`train.stop_at` or `max_steps`: the
24K-step checkpoint for phi-1-base). With the finetune, phi-1 kept the best of its checkpoints
saved every 1K steps: the candidates are the finetune's checkpoints, each saved with the
validation loss measured at its own step, and `train.finetune.select_by` picks one
(`val_loss`: the lowest; `last`: the last). Pruning (`keep_last`) never removes the best so
far, so the best of those kept is the best of all saved. The choice is written to
`05_train/selected.json` (phi_lib.trained), which `checkpoint` resolves to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from phi_lib.config import Config
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.phases import plan_phases


def candidates(cfg: Config, out: Path) -> list[dict]:
    """The finetune's checkpoints on disk, in step order, with the val loss of their step
    (None where the loss was not measured at that step)."""
    phases = plan_phases(cfg, out)
    ft = phases[-1]
    if ft.name != "finetune":
        return []
    rows = []
    for step, path in ckpt.list_checkpoints(Path(out) / "checkpoints"):
        if ft.offset < step <= ft.last_step:
            state = ckpt.read_state(path)
            measured = state.get("val_step") == step
            rows.append({"step": step, "val_loss": state.get("val_loss") if measured else None})
    return rows


def best(rows: list[dict], select_by: str) -> Optional[dict]:
    """The row `select_by` picks (`last`, or the lowest `val_loss`; the earliest on a tie)."""
    if select_by == "last":
        return rows[-1] if rows else None
    scored = [r for r in rows if r.get(select_by) is not None]
    return min(scored, key=lambda r: (r[select_by], r["step"])) if scored else None


def check_selectable(cfg: Config) -> None:
    """Before training: `select_by: val_loss` needs validation windows of the finetune set."""
    from phi_lib.packed import FINETUNE_DIR, read_index
    from phi_lib.stages import STAGES

    ft = cfg.train.finetune
    if not (ft.enabled and ft.select_by == "val_loss"):
        return
    folder = STAGES["03"].dir(cfg) / FINETUNE_DIR / "val"
    if not (read_index(folder) or {}).get("n_windows"):
        raise ValueError(f"train.finetune.select_by=val_loss: the finetune set has no validation "
                         f"windows ({folder}); set train.finetune.select_by=last, or raise "
                         f"mix.val_fraction so that stage 03 holds some of its documents out")


def protected_steps(cfg: Config, out: Path) -> tuple[int, ...]:
    """Steps `keep_last` must not prune: the finetune's start and its best checkpoint so far."""
    if not cfg.train.finetune.enabled:
        return ()
    pick = best(candidates(cfg, out), cfg.train.finetune.select_by)
    return (cfg.train.finetune_start,) + ((pick["step"],) if pick else ())


def select(cfg: Config, out: Path) -> dict:
    """The selection record (see phi_lib.trained) for a finished run; raises if the checkpoint
    it needs is not there."""
    out = Path(out)
    last = plan_phases(cfg, out)[-1]
    if last.name == "pretrain":
        pick, rows, select_by = {"step": last.last_step}, [], "last"
    else:
        rows, select_by = candidates(cfg, out), cfg.train.finetune.select_by
        pick = best(rows, select_by)
        if pick is None:
            raise FileNotFoundError(
                f"train.finetune.select_by={select_by}: no finetune checkpoint with a measured "
                f"{select_by} under {out / 'checkpoints'} (candidates: {rows}); has the finetune run?")
    path = ckpt.step_dir(out / "checkpoints", pick["step"])
    if not (path / ckpt.STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} not found: training has not reached step {pick['step']} "
                                f"(the {last.name}'s last)")
    return {"step": pick["step"], "checkpoint": f"checkpoints/{path.name}", "phase": last.name,
            "select_by": select_by, "value": pick.get(select_by) if select_by != "last" else None,
            "candidates": rows}
