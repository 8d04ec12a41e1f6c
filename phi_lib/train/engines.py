"""Two ways to run one optimizer step, behind one interface.

`PlainEngine`: one process, torch only: autocast + `GradScaler` (fp16 dynamic loss scaling)
or bf16 autocast with fp32 master weights, gradient clipping, the optimizer and schedule.
`DeepSpeedEngine`: one process per device under the `deepspeed` or `torchrun` launcher;
DeepSpeed does ZeRO sharding, loss scaling, accumulation and clipping from the JSON config.

Both take micro-batches (`micro_step`) and then finish the optimizer step (`finish_step`),
and save/restore their optimizer state inside a checkpoint dir.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F



def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the B x (T-1) predicted positions, in fp32."""
    vocab = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


def batch_loss(forward, batch) -> torch.Tensor:
    """The loss of a micro-batch: packed ids (B, T) -> `lm_loss`; an image-text batch
    (phi_lib.data.image_text.ImageTextBatch) computes its own (text tokens only)."""
    if isinstance(batch, torch.Tensor):
        return lm_loss(forward(batch), batch)
    return batch.loss(forward)


def save_hf(model: torch.nn.Module, folder: Path, state_dict: Optional[dict] = None) -> None:
    """config.json + model.safetensors in fp32, what transformers' from_pretrained reads.

    `state_dict` (fp32 master weights rebuilt from ZeRO shards) replaces the module's own
    16-bit weights: it is loaded into a CPU copy built on the meta device (no init cost)."""
    if state_dict is None:
        model.save_pretrained(folder, dtype="float32")
        return
    with torch.device("meta"):
        copy = type(model)(model.config)
    state = {k: v.float() for k, v in state_dict.items()}
    if model.config.tie_word_embeddings:  # a tied head may be gathered once, as the embedding
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    copy.load_state_dict(state, assign=True)
    copy.save_pretrained(folder, dtype="float32")


class PlainEngine:
    """Single-process training step with torch AMP."""

    def __init__(self, model, optimizer, scheduler, *, precision: str, grad_clip: float,
                 accumulation: int, initial_scale_power: int = 16, loss_scale_window: int = 1000,
                 min_loss_scale: float = 1.0):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.precision, self.grad_clip, self.accumulation = precision, grad_clip, accumulation
        self.device = next(model.parameters()).device
        self.min_loss_scale = min_loss_scale
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**initial_scale_power,
                                           growth_interval=loss_scale_window,
                                           enabled=precision == "fp16")
        self.skipped_steps = 0

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def forward(self, input_ids: torch.Tensor, **inputs) -> torch.Tensor:
        with self.autocast():
            return self.module(input_ids, **inputs)

    def micro_step(self, input_ids) -> torch.Tensor:
        loss = batch_loss(self.forward, input_ids)
        self.scaler.scale(loss / self.accumulation).backward()
        return loss.detach()

    def finish_step(self) -> dict:
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or math.inf)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        skipped = self.precision == "fp16" and self.scaler.get_scale() < scale
        if skipped:
            self.skipped_steps += 1
            if self.scaler.get_scale() < self.min_loss_scale:
                raise FloatingPointError(
                    f"fp16 loss scale fell below train.min_loss_scale={self.min_loss_scale}: "
                    "gradients overflow at every scale (diverged)")
        else:
            self.scheduler.step()  # as DeepSpeed: a skipped step does not advance the schedule
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "loss_scale": scale if self.precision == "fp16" else None,
                "skipped": skipped}

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, folder: Path, rank: int) -> None:
        save_hf(self.module, folder)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps},
                   Path(folder) / "training_state.pt")

    def load(self, folder: Path) -> bool:
        """Optimizer/scheduler/scaler states, if this checkpoint has them (the weights were
        loaded into the model before the engine was built)."""
        path = Path(folder) / "training_state.pt"
        if not path.is_file():
            return False
        state = torch.load(path, weights_only=False, map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state.get("skipped_steps", 0)
        return True


class DeepSpeedEngine:
    """One rank of a DeepSpeed run (ZeRO stage, precision and clipping from `ds_config`)."""

    def __init__(self, model, optimizer, scheduler, ds_config: dict, precision: str):
        import deepspeed

        self.precision = precision
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.engine.module
        self.device = self.engine.device

    @property
    def skipped_steps(self) -> int:
        return int(self.engine.skipped_steps)

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed casts the module itself

    def forward(self, input_ids: torch.Tensor, **inputs) -> torch.Tensor:
        return self.engine(input_ids, **inputs)

    def micro_step(self, input_ids) -> torch.Tensor:
        loss = batch_loss(self.forward, input_ids)
        self.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps
        self.engine.step()  # updates only at the accumulation boundary
        return loss.detach()

    def finish_step(self) -> dict:
        norm = self.engine.get_global_grad_norm()
        scale = getattr(self.optimizer, "cur_scale", None) if self.precision == "fp16" else None
        skipped = bool(getattr(self.optimizer, "overflow", False))
        return {"grad_norm": float(norm) if norm is not None else float("nan"),
                "loss_scale": float(scale) if scale is not None else None, "skipped": skipped}

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: Path, rank: int) -> None:
        """Collective: every rank writes its optimizer shard; rank 0 the fp32 HF weights."""
        import torch.distributed as dist

        self.engine.save_checkpoint(str(folder), tag="deepspeed", save_latest=False)
        dist.barrier()
        if rank == 0:
            state_dict = None
            if self.precision != "fp32":  # the module holds 16-bit copies: rebuild fp32 masters
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                state_dict = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="deepspeed")
            save_hf(self.module, folder, state_dict)

    def load(self, folder: Path) -> bool:
        """DeepSpeed's module + optimizer + scheduler states, if this checkpoint has them (one
        written by the single-process path has only the weights, loaded before `initialize`)."""
        if not (Path(folder) / "deepspeed").is_dir():
            return False
        path, _ = self.engine.load_checkpoint(str(folder), tag="deepspeed",
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}")
        return True
