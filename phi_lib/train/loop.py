"""The training loop of one rank: phases, accumulation, validation, logging, checkpoints.

    Trainer(cfg, out).run()       # what `python -m phi_lib.train` runs in every process

Per optimizer step: `accumulation` micro-batches of the packed stream (this rank's share of
the global batch), one optimizer step, the loss averaged over the global batch. Every
`log_every` steps a metrics record (loss, lr, grad norm, loss scale, tokens/s, MFU); every
`eval_every` the validation loss; every `save_every` (and at the end of a phase) a
checkpoint: the Hugging Face weights plus the model's tokenizer (`model.tokenizer`), so
stages 06/07 and transformers read a checkpoint with the ids it was trained on, and the
fingerprint of what produced it (phi_lib.train.fingerprint). On start it resumes from the
newest complete checkpoint if that fingerprint matches the config (or differs by a
continuation), else it stops before any work with `StaleArtifact`: weights, optimizer,
schedule, loss scaler, RNG and data position, so the loss curve continues exactly, with the
optimizer hyperparameters of the config (not the restored state's). Packed data made with
another tokenizer, or with ids past the model's embedding, stops the phase before its first step.
phi-3-vision with stage 03's image-text records (`mix.image_text`) trains on those (their images
through the processor, the loss on text tokens), mixed with packed text windows by its weight;
`train.freeze_image_encoder` keeps CLIP out of the optimizer.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from phi_lib.config import Config
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.deepspeed_config import accumulation_steps, write_ds_config
from phi_lib.train.engines import DeepSpeedEngine, PlainEngine
from phi_lib.train.errors import NonFiniteLoss
from phi_lib.train.fingerprint import check_resume, phase_fingerprint
from phi_lib.train.metrics import MetricsLog
from phi_lib.train.mfu import device_kind, mfu, peak_tflops
from phi_lib.train.optim import make_optimizer, set_hyperparameters
from phi_lib.train.phases import Phase, plan_phases
from phi_lib.train.schedule import make_scheduler
from phi_lib.train.select import protected_steps


class Trainer:
    def __init__(self, cfg: Config, out: Path, log=print, config_digest: Optional[str] = None):
        self.cfg, self.tc, self.out = cfg, cfg.train, Path(out)
        self.seed = cfg.run.seed if cfg.train.seed is None else cfg.train.seed
        """Init and data-order seed (`train.seed`, else `run.seed`)."""
        self.config_digest = config_digest
        """Digest of the config file this process read (recorded in each checkpoint)."""
        self.distributed = cfg.train.launcher != "single"
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.ckpt_root = self.out / "checkpoints"
        self._print = log
        self.phases = plan_phases(cfg, self.out)
        self._hf_tokenizer = None

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self.rank == 0:
            self._print(msg, flush=True) if self._print is print else self._print(msg)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized():
            values = values.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(values)
            values = values / self.world
        return values

    def build_model(self, init: Optional[Path]):
        from phi_lib.model import PhiConfig, build_model

        torch.manual_seed(self.seed)  # the same init on every rank and every run
        model = build_model(PhiConfig.from_model_config(self.cfg.model))  # any family
        if init is not None:
            state = ckpt.load_weights(init)
            if model.config.tie_word_embeddings:  # saved once, as the embedding (phi-3-small)
                state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
            model.load_state_dict(state)
        model.gradient_checkpointing_enable(self.tc.activation_checkpointing)
        if self.tc.freeze_image_encoder:  # before the optimizer: it holds trainable weights only
            if not hasattr(model, "freeze_image_encoder"):
                raise ValueError(f"train.freeze_image_encoder: {type(model).__name__} has no image "
                                 "encoder (only phi-3-vision presets do)")
            model.freeze_image_encoder(True)
        return model.to(self.device)

    # ------------------------------------------------------------------ run
    def run(self) -> Optional[Path]:
        """Train every phase not finished yet; returns the last checkpoint. A checkpoint made
        with another config stops this before anything is built (StaleArtifact)."""
        resume, state = check_resume(self.cfg, self.out)
        if self.rank == 0:
            ckpt.clean_partial(self.ckpt_root)
        self.barrier()
        for phase in self.phases:
            if state is not None and state["step"] >= phase.last_step:
                continue  # finished before
            here = state is not None and state.get("phase") == phase.name
            self.train_phase(phase, resume if here else None, state if here else None)
            state = None
        return ckpt.latest(self.ckpt_root)

    def build_engine(self, phase: Phase, resume: Optional[Path]):
        """Model, optimizer, schedule and engine of `phase`, restored from `resume` if given
        (with the config's hyperparameters, not the saved ones)."""
        tc = self.tc
        init = resume if resume is not None else phase.init_from
        if init is not None and not (Path(init) / "config.json").is_file():
            raise FileNotFoundError(f"{phase.name}: start checkpoint {init} not found")
        model = self.build_model(init)
        accumulation = accumulation_steps(phase.global_batch_size, tc.micro_batch_size, self.world)
        optimizer = make_optimizer(model, tc.optimizer, phase.lr, tc.betas, tc.eps, phase.weight_decay)
        scheduler = make_scheduler(optimizer, tc.schedule, phase.warmup_steps, phase.schedule_steps)
        if self.distributed:
            suffix = "" if phase.name == "pretrain" else f"_{phase.name}"
            ds_path = self.out / f"ds_config{suffix}.json"
            if self.rank == 0:
                write_ds_config(tc, ds_path, global_batch_size=phase.global_batch_size,
                                world_size=self.world)
            self.barrier()
            from phi_lib.io import read_json

            engine = DeepSpeedEngine(model, optimizer, scheduler, read_json(ds_path), tc.precision)
        else:
            engine = PlainEngine(model, optimizer, scheduler, precision=tc.precision,
                                 grad_clip=tc.grad_clip, accumulation=accumulation,
                                 initial_scale_power=tc.initial_scale_power,
                                 loss_scale_window=tc.loss_scale_window,
                                 min_loss_scale=tc.min_loss_scale)
        if resume is not None:
            if not engine.load(resume):
                warnings.warn(f"{resume} has no optimizer state for this launcher: resuming "
                              "with the weights only (fresh optimizer and schedule)")
            set_hyperparameters(scheduler, phase.lr, tc.betas, tc.eps, phase.weight_decay)
            ckpt.load_rng(resume, self.rank)
        return engine, accumulation

    def train_phase(self, phase: Phase, resume: Optional[Path], state: Optional[dict]) -> None:
        tc = self.tc
        engine, accumulation = self.build_engine(phase, resume)
        model = engine.module
        fingerprint = phase_fingerprint(self.cfg, phase.name)
        step, sample, tokens = phase.offset, 0, 0
        if resume is not None:
            step, sample, tokens = state["step"], state["sample"], state["tokens"]
            self.log(f"[{phase.name}] resumed from {resume.name}: step {step}, sample {sample}")
        else:
            self.log(f"[{phase.name}] starting at step {step + 1}"
                     + (f" from {phase.init_from}" if phase.init_from else " from random init"))

        dataset = training_data(phase.data_dir, model)
        train_ds = dataset(phase.data_dir, "train")
        check_packed_data(train_ds, self.cfg.model.tokenizer, model.config.vocab_size)
        try:
            val_ds = dataset(phase.data_dir, "val")
        except FileNotFoundError as e:
            val_ds = None
            self.log(f"[{phase.name}] no validation split ({e}): val_loss is not measured")
        seq_len = train_ds.seq_len
        from phi_lib.model.planning import flops_per_token

        fpt = flops_per_token(model.config, seq_len)
        peak = peak_tflops(self.device, tc.precision, tc.peak_tflops)
        metrics = MetricsLog(self.out, resume_step=step, tensorboard=tc.tensorboard) \
            if self.rank == 0 else None
        self.log(f"[{phase.name}] {self.world} process(es) x micro {tc.micro_batch_size} x "
                 f"accumulation {accumulation} = {phase.global_batch_size} sequences of {seq_len} "
                 f"tokens per step; {tc.precision}; steps {step + 1}..{phase.last_step}"
                 + (f" of a {phase.schedule_steps}-step schedule"
                    if phase.schedule_steps != phase.steps else ""))
        # the finetune's candidates need the val loss of their own step (select_by)
        select = phase.name == "finetune" and tc.finetune.select_by == "val_loss"

        batches = train_ds.iter_batches(tc.micro_batch_size, self.rank, self.world,
                                        start_sample=sample, seed=self.seed)
        engine.train()
        window_t0, window_steps, window_tokens = time.perf_counter(), 0, 0
        last_val, val_step = None, None
        try:
            while step < phase.last_step:
                step += 1
                lr = engine.lr  # the lr this step's update uses
                micro_losses, step_tokens = [], 0
                for _ in range(accumulation):
                    input_ids, sample = next(batches)
                    step_tokens += input_ids.numel() * self.world  # image-text: padding left out
                    micro_losses.append(engine.micro_step(input_ids.to(self.device, non_blocking=True)))
                info = engine.finish_step()
                loss = float(self.all_mean(torch.stack(micro_losses).mean().float().reshape(1)))
                tokens += step_tokens
                window_tokens += step_tokens
                window_steps += 1
                if not math.isfinite(loss):
                    raise NonFiniteLoss(step, loss, ckpt.latest(self.ckpt_root))
                end = step == phase.last_step
                record = None
                if step % tc.log_every == 0 or end:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - window_t0
                    tps = window_tokens / dt
                    record = {"step": step, "phase": phase.name, "train_loss": loss,
                              "lr": lr,
                              "grad_norm": info["grad_norm"], "loss_scale": info["loss_scale"],
                              "skipped_steps": engine.skipped_steps, "tokens": tokens,
                              "tokens_per_s": tps, "mfu": mfu(tps, fpt, peak, self.world),
                              "device": device_kind(self.device),  # what the MFU holds for
                              "step_time_s": dt / window_steps}
                    window_t0, window_steps, window_tokens = time.perf_counter(), 0, 0
                save = phase.saves_at(step)
                if val_ds is not None and ((step - phase.offset) % tc.eval_every == 0 or end
                                           or (select and save)):
                    last_val, val_step = self.validate(engine, val_ds), step
                    record = record or {"step": step, "phase": phase.name}
                    record["val_loss"] = last_val
                if record is not None and metrics is not None:
                    metrics.log(record)
                    self.log(" | ".join(f"{k} {_fmt(v)}" for k, v in record.items()))
                if save:
                    self.save(engine, phase, fingerprint, step, sample, tokens, loss, last_val,
                              val_step)
                    window_t0 = time.perf_counter()  # checkpoint time is not training time
        finally:
            if metrics is not None:
                metrics.close()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, engine, val_ds) -> float:
        """Mean next-token loss over up to `eval_batches` micro-batches per rank of val."""
        from phi_lib.train.engines import batch_loss

        mb = self.tc.micro_batch_size
        n = max(1, min(self.tc.eval_batches, len(val_ds) // (mb * self.world)))
        engine.train(False)
        total = torch.zeros(1, dtype=torch.float64)
        for _, (input_ids, _) in zip(range(n), val_ds.iter_batches(mb, self.rank, self.world, seed=0)):
            input_ids = input_ids.to(self.device)
            total += batch_loss(engine.forward, input_ids).double().cpu()
        engine.train(True)
        return float(self.all_mean(total / n))

    # ------------------------------------------------------------------ checkpoints
    def hf_tokenizer(self):
        """The model's tokenizer as transformers saves it (written into each checkpoint)."""
        if self._hf_tokenizer is None:
            from phi_lib.data.tokenizer import load_tokenizer

            self._hf_tokenizer = load_tokenizer(self.cfg.model.tokenizer,
                                                data_dir=self.cfg.run.data_dir).to_transformers()
        return self._hf_tokenizer

    def save(self, engine, phase: Phase, fingerprint, step: int, sample: int, tokens: int,
             loss: float, val_loss: Optional[float], val_step: Optional[int]) -> None:
        tmp = ckpt.tmp_dir(self.ckpt_root, step)
        if self.rank == 0:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        engine.save(tmp, self.rank)
        ckpt.save_rng(tmp, self.rank)
        if self.rank == 0:
            self.hf_tokenizer().save_pretrained(str(tmp))
        self.barrier()
        if self.rank == 0:
            state = {"step": step, "phase": phase.name, "phase_step": step - phase.offset,
                     "sample": sample, "tokens": tokens, "train_loss": loss, "val_loss": val_loss,
                     "val_step": val_step, "world_size": self.world, "launcher": self.tc.launcher,
                     "precision": self.tc.precision, "fingerprint": fingerprint.to_dict(),
                     "config_digest": self.config_digest,
                     "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            final = ckpt.finalize(self.ckpt_root, step, state)
            protect = protected_steps(self.cfg, self.out)  # the finetune's start and best
            removed = ckpt.prune(self.ckpt_root, self.tc.keep_last, protect)
            self.log(f"saved {final}" + (f" (pruned {removed})" if removed else ""))
        self.barrier()


def training_data(mix_dir: Path, model):
    """The reader of a phase's data: the packed windows, or for phi-3-vision the image-text
    records when stage 03 wrote them (`mix.image_text`, with a share of text windows when its
    weight < 1), which a text model cannot use."""
    from phi_lib.image_text import IMAGE_TEXT_DIR, INDEX, open_split
    from phi_lib.packed import PackedDataset

    if not (Path(mix_dir) / IMAGE_TEXT_DIR / INDEX).is_file():
        return PackedDataset
    if not hasattr(model, "freeze_image_encoder"):
        raise ValueError(f"{mix_dir / IMAGE_TEXT_DIR} holds image-text records (mix.image_text) but "
                         f"the model is {type(model).__name__}, not phi-3-vision (model.preset)")
    return open_split


def check_packed_data(ds, tokenizer: str, vocab_size: int) -> None:
    """The packed mixture must hold the model's tokenizer's ids, all inside its embedding."""
    packed_with = ds.mix.get("tokenizer")
    if packed_with is not None and packed_with != tokenizer:
        raise ValueError(f"{ds.mix_dir} was packed with the tokenizer {packed_with!r}, but the model "
                         f"trains with {tokenizer!r} (model.tokenizer): rerun stage 03 "
                         "(python -m phi_lib run <params> --stages 03)")
    ids = ds.mix.get("vocab_size")
    if ids is not None and ids > vocab_size:
        raise ValueError(f"{ds.mix_dir} holds ids up to {ids - 1}, past the model's embedding "
                         f"(vocab_size {vocab_size}); model.vocab_size must be at least {ids}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
