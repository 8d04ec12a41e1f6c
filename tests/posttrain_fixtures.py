"""Tiny models and jobs for the stage-08 tests: a 2-layer Llama over the real phi-3-mini
tokenizer of the data folder (with the training template installed), and job dicts as the
stage writes them for `phi_lib.posttrain.train`."""
from __future__ import annotations

import json
from pathlib import Path

from phi_lib.paths import data_path

CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "content": "5 x 4 = 20, so the answer is 20."},
]
PAIRS = [
    {"prompt": [{"role": "user", "content": f"Question {i}: is the sky blue?"}],
     "chosen": [{"role": "assistant", "content": "Yes: on a clear day the sky is blue."}],
     "rejected": [{"role": "assistant", "content": "Go away."}]}
    for i in range(4)]


def phi3_tokenizer(template: str = "phi-3"):
    from transformers import AutoTokenizer

    from phi_lib.posttrain import chat

    tok = AutoTokenizer.from_pretrained(str(data_path("tokenizers/phi-3-mini")))
    if template:
        chat.install(tok, template)
    return tok


def tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32) with the phi-3 tokenizer and training template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = phi3_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      bos_token_id=1, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    folder = Path(folder)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job(phase: str, phase_dir: Path, model: Path, data: Path, **args) -> dict:
    """A job as `PosttrainStage._job` writes it (CPU, fp32, no LoRA unless given)."""
    from phi_lib.posttrain import chat

    lora = args.pop("lora", None)
    base = dict(precision="fp32", learning_rate=5e-3, lr_scheduler_type="constant_with_warmup",
                warmup_steps=0.0, weight_decay=0.0, num_train_epochs=1.0, max_steps=4,
                per_device_train_batch_size=2, gradient_accumulation_steps=1, max_grad_norm=1.0,
                max_length=128, save_steps=100, save_total_limit=2, logging_steps=1, seed=1,
                activation_checkpointing=False)
    base.update(dict(assistant_only_loss=True, packing=False) if phase == "sft" else
                dict(beta=0.1, loss_type=["sigmoid"]))
    base.update(args)
    tok = phi3_tokenizer()
    return {"phase": phase, "phase_dir": str(phase_dir), "model": str(model), "data": str(data),
            "columns": ["messages"] if phase == "sft" else ["prompt", "chosen", "rejected"],
            "args": base, "device": "cpu", "lora": lora,
            "end_of_turn_id": chat.end_of_turn_id(tok, "phi-3"), "fingerprint": {"key": "test"}}
