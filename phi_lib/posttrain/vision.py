"""Stage 08 on a phi-3-vision base: SFT on image-text conversations (and text ones).

    records {"messages": [...], "images": [paths]}   (paths relative to the record's file)
    -> checked by the processor (images readable, <|image_k|> tags matching the images, the
       whole conversation within sft.max_length): a bad record is a counted drop naming it
    -> data/sft.jsonl rows with absolute image paths                              sft_data
    -> per micro-batch: Phi3VisionProcessor.encode_sft (pixel_values, image_sizes, the ids
       with the images' tokens, labels = the assistant turns' tokens only), left-padded
    -> transformers' Trainer on our Phi3VisionForCausalLM                        train_sft

Why not TRL's SFTTrainer: TRL 1.x reads the model's transformers config (`get_config_model_id`,
`config.get_text_config()`), which our model (a dataclass config, our checkpoint format) does
not have. transformers' Trainer drives any nn.Module; this file gives it our loss (the labels
above: TRL's assistant-only loss, image tokens and user turns masked), our checkpoint format
(`checkpoint-N/` holds config.json + model.safetensors as stage 05's, optimizer and RNG states
as TRL's, `trainer_state.json` last) and the resume from it. The job, checkpoint, resume and
final-model contract is `phi_lib.posttrain.train`'s.

Not here: DPO of a vision model (TRL's DPOTrainer loads transformers models only), LoRA,
packing (a conversation is one sequence: an image cut at a window edge is meaningless).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from phi_lib.posttrain.records import Drops

MODEL_TYPE = "phi3_v"
PROCESSOR_CONFIG = "preprocessor_config.json"


def is_vision_model(folder) -> bool:
    """Whether `folder` holds a phi-3-vision checkpoint of ours (config.json's model_type)."""
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MODEL_TYPE


def check_settings(pc, template: str) -> None:
    """Stop before any work on the settings a vision base cannot use, naming the key."""
    base = f"posttrain.base_model={pc.base_model!r} is a phi-3-vision model"
    if template != "phi-3":
        raise ValueError(f"posttrain.chat_template: {base}, whose conversations are in the phi-3 "
                         f"format (the processor's); got {template!r}: set posttrain.chat_template=phi-3")
    if pc.lora.enabled:
        raise ValueError(f"posttrain.lora.enabled: {base}; LoRA is not implemented for it (set false)")
    if pc.sft.packing:
        raise ValueError(f"posttrain.sft.packing: {base}; image-text SFT trains one conversation "
                         "per sequence (an image cut at a window edge is meaningless): set false")
    if pc.zero_stage == 3 and pc.world_size > 1:
        raise ValueError(f"posttrain.zero_stage: {base}; its checkpoints are saved from the "
                         "unsharded model: ZeRO-3 is not supported, use 2")


def dpo_unsupported(pc) -> ValueError:
    return ValueError(f"posttrain.base_model={pc.base_model!r} is a phi-3-vision model: DPO is not "
                      "implemented for it (TRL's DPOTrainer loads transformers models only); its "
                      "SFT model is sft/model/. Stage 08 stops here, before any DPO work")


def processor(model_dir, num_crops: int):
    """The processor over the tokenizer files of `model_dir` (what training reads)."""
    from phi_lib.data.tokenizer import _from_path
    from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor

    return Phi3VisionProcessor(_from_path(Path(model_dir), str(model_dir)), num_crops=num_crops)


def fits(pool: list[dict], drops: Drops, proc, max_length: int) -> list[dict]:
    """The conversations the processor can encode within `max_length` tokens (image tokens
    included); the others counted by reason (`missing_image`, `unreadable_image`,
    `bad_image_tags`, `too_long`) with the message naming the record."""
    from phi_lib.image_text import drop_reason
    from phi_lib.model.phi3_vision_processor import ImageRecordError

    kept = []
    for rec in pool:
        try:
            ids, _ = proc.expand(rec, rec["id"])
        except ImageRecordError as e:
            drops.add(drop_reason(str(e)), str(e), rec["id"])
            continue
        if len(ids) > max_length:
            drops.add("too_long", f"{len(ids)} tokens > sft.max_length={max_length}", rec["id"])
        else:
            kept.append(rec)
    return kept


def images_digest(rows) -> str:
    """Content digest of every image the rows name (a changed image changes its tokens)."""
    from phi_lib.provenance import digest, path_digest

    paths = sorted({p for r in rows for p in r.get("images") or []})
    return digest({p: path_digest(p) if Path(p).is_file() else None for p in paths})


# ----------------------------------------------------------------------------- training
class Collator:
    """Rows of data/sft.jsonl -> a left-padded batch with labels on the assistant tokens."""

    def __init__(self, proc):
        self.proc = proc

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        from phi_lib.model.phi3_vision_processor import collate

        encoded, labels = [], []
        for row in rows:
            enc, lab = self.proc.encode_sft(row, row["id"])
            encoded.append(enc)
            labels.append(lab)
        batch = collate(encoded, self.proc.tokenizer.pad_id)
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([[-100] * (width - len(x)) + x for x in labels])
        if not len(batch["pixel_values"]):  # a text-only batch
            del batch["pixel_values"], batch["image_sizes"]
        return batch


def _loss_module():
    """The loss wrapper class (defined on first use: torch is imported lazily here)."""
    import torch.nn.functional as F
    from torch import nn

    class SFTLoss(nn.Module):
        """Our model as Trainer calls it: next-token cross entropy on the labelled tokens."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, labels, pixel_values=None, image_sizes=None):
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            if pixel_values is not None:
                pixel_values = pixel_values.to(self.lm.dtype)
            logits = self.lm(input_ids, attention_mask=attention_mask, position_ids=positions,
                             pixel_values=pixel_values, image_sizes=image_sizes)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
            return {"loss": loss, "logits": logits}

    return SFTLoss


def build_trainer(job: dict, common: dict):
    """transformers' Trainer of a vision SFT job (`common`: the TrainingArguments the TRL
    configs get too)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from phi_lib.io import read_jsonl
    from phi_lib.model import PhiForCausalLM

    SFTLoss = _loss_module()
    a = dict(job["args"])
    precision = a.pop("precision")
    checkpointing = a.pop("activation_checkpointing", False)
    for key in ("max_length", "assistant_only_loss", "packing"):  # checked when the data was made
        a.pop(key, None)
    args = TrainingArguments(**common, **a, remove_unused_columns=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    lm = PhiForCausalLM.from_pretrained(job["model"], dtype=dtype)
    lm.gradient_checkpointing_enable(bool(checkpointing))
    lm.train()
    proc = processor(job["model"], job["vision"]["num_crops"])

    class VisionTrainer(Trainer):
        """Checkpoints in our format (config.json + model.safetensors), resumed from it."""

        def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
            if self.args.should_save:
                self.model.lm.save_pretrained(output_dir or self.args.output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            back = PhiForCausalLM.from_pretrained(resume_from_checkpoint, dtype=dtype)
            (model or self.model).lm.load_state_dict(back.state_dict())

    rows = list(read_jsonl(job["data"]))
    return VisionTrainer(model=SFTLoss(lm), args=args, train_dataset=rows, data_collator=Collator(proc))


def finish_model(folder: Path, job: dict, end_of_turn_id: int) -> None:
    """The end-of-turn token among the saved model's EOS ids, and the processor's settings."""
    from phi_lib.io import atomic_write_json
    from phi_lib.model.phi3_vision_processor import CLIP_MEAN, CLIP_STD

    gen_file = folder / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    eos = gen.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end_of_turn_id not in eos:
        gen["eos_token_id"] = [end_of_turn_id, *eos]
    atomic_write_json(gen_file, gen)
    atomic_write_json(folder / PROCESSOR_CONFIG, {"num_crops": job["vision"]["num_crops"],
                                                  "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)})
