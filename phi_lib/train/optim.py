"""The optimizer: Adam (phi-1.5: betas 0.9/0.98, eps 1e-7, wd 0.1) or AdamW (phi-1).

Weight decay applies to matrices only (linear and embedding weights), not to biases and
LayerNorm parameters, as in GPT-2/nanoGPT practice; the papers do not say otherwise.
"""
from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, kind: str, lr: float, betas: list[float],
                   eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """`adam` couples weight decay into the gradient (L2, as torch.optim.Adam); `adamw`
    decouples it. Fused kernels on CUDA."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(kind)
    if cls is None:
        raise ValueError(f"train.optimizer: unknown optimizer {kind!r} (known: adam, adamw)")
    fused = next(model.parameters()).is_cuda
    return cls(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
               fused=fused or None)


def set_hyperparameters(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float,
                        betas: list[float], eps: float, weight_decay: float) -> None:
    """After a resume: the config's hyperparameters, not the saved ones that the optimizer's
    `load_state_dict` restored (a legitimate continuation must not train on with another
    run's settings), and the lr the schedule gives at the restored step. The groups are
    `param_groups`' (decayed matrices, then the rest); `scheduler.optimizer` is the torch
    optimizer under either engine."""
    groups = scheduler.optimizer.param_groups
    for group, wd in zip(groups, (weight_decay, 0.0)):
        group.update(betas=tuple(betas), eps=eps, weight_decay=wd, initial_lr=lr)
    scheduler.base_lrs = [lr] * len(groups)
    for group, lam in zip(groups, scheduler.lr_lambdas):
        group["lr"] = lr * lam(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in groups]
