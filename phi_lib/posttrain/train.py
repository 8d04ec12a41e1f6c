"""The training program every launched process runs, for one phase (SFT or DPO) with TRL:

    python -m phi_lib.posttrain.train --job 08_posttrain/sft/job.json
    deepspeed --num_gpus 8 --module phi_lib.posttrain.train --job ...
    accelerate launch --config_file 08_posttrain/dpo/accelerate.yaml -m phi_lib.posttrain.train --job ...

The job (written by the stage, `phi_lib.posttrain.stage`) names the model folder to start
from (its tokenizer carries the training chat template), the data (`messages` records for
SFT; `prompt`/`chosen`/`rejected` for DPO), TRL's arguments, LoRA, and the fingerprint.
A job with `vision` (a phi-3-vision base) trains our model on image-text conversations with
transformers' Trainer instead (`phi_lib.posttrain.vision`), under the same contract.

Checkpoints go to `<phase>/run/checkpoint-N` (TRL/HF format: weights or adapter, optimizer,
scheduler, RNG states, `trainer_state.json` written last). A run resumes from the last
complete one (one without `trainer_state.json` was cut by a kill and is removed). At the end
the model (LoRA merged) is saved in HF format, with the tokenizer, to `<phase>/model/`
(through a temporary folder, renamed when complete), with the end-of-turn token among the
generation config's EOS ids so that generation stops at the end of an answer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from phi_lib.io import atomic_write_json, read_json, read_jsonl

STATE = "trainer_state.json"
JOB_KEYS = ("phase", "phase_dir", "model", "data", "columns", "args", "end_of_turn_id", "fingerprint")


def last_complete_checkpoint(run_dir: Path) -> Optional[Path]:
    """The highest `checkpoint-N` with its trainer state; cut ones (a kill mid-save) removed."""
    run_dir = Path(run_dir)
    done = []
    for d in run_dir.glob("checkpoint-*"):
        if not d.name.split("-")[-1].isdigit():
            continue
        if (d / STATE).is_file():
            done.append((int(d.name.split("-")[-1]), d))
        else:
            shutil.rmtree(d, ignore_errors=True)
    return max(done)[1] if done else None


def common_args(job: dict, on_cpu: bool) -> dict:
    """The TrainingArguments every phase gets beside the job's own."""
    precision = job["args"]["precision"]
    return dict(output_dir=str(Path(job["phase_dir"]) / "run"), report_to=[],
                bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=on_cpu,
                save_strategy="steps", disable_tqdm=False, deepspeed=job.get("deepspeed"),
                dataloader_num_workers=0, logging_first_step=True)


def trl_args(job: dict, on_cpu: bool):
    """TRL's SFTConfig / DPOConfig from the job's arguments."""
    from trl import DPOConfig, SFTConfig

    a = dict(job["args"])
    a.pop("precision")
    cls = SFTConfig if job["phase"] == "sft" else DPOConfig
    return cls(**common_args(job, on_cpu), **a)


def load_data(job: dict):
    import datasets

    rows = [{k: r[k] for k in job["columns"]} for r in read_jsonl(job["data"])]
    return datasets.Dataset.from_list(rows)


def peft_config(lora: Optional[dict]):
    if not lora:
        return None
    from peft import LoraConfig

    targets = lora["target_modules"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      task_type="CAUSAL_LM")


def build_trainer(job: dict):
    """The TRL trainer of a job (used by `main`, and by tests on a tiny model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_cpu = job.get("device") == "cpu" or not torch.cuda.is_available()
    if job.get("vision"):  # a phi-3-vision base: our model, transformers' Trainer
        from phi_lib.posttrain import vision

        return vision.build_trainer(job, common_args(job, on_cpu))
    args = trl_args(job, on_cpu)
    tok = AutoTokenizer.from_pretrained(job["model"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job["args"]["precision"], torch.float32)
    data = load_data(job)
    peft = peft_config(job.get("lora"))
    if job["phase"] == "sft":
        from trl import SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype)
        return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                          peft_config=peft)
    from trl import DPOTrainer

    args.model_init_kwargs = {"dtype": dtype}  # TRL loads policy and reference from the path
    return DPOTrainer(model=job["model"], args=args, train_dataset=data, processing_class=tok,
                      peft_config=peft)


def save_final(trainer, job: dict) -> Path:
    """The trained model in HF format (LoRA merged), with the tokenizer, at `<phase>/model`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    phase_dir = Path(job["phase_dir"])
    final, tmp = phase_dir / "model", phase_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # gathers ZeRO-3 shards; with LoRA: the adapter
    if not trainer.is_world_process_zero():
        return final
    tok = AutoTokenizer.from_pretrained(job["model"])
    if job.get("vision"):
        from phi_lib.posttrain import vision

        vision.finish_model(tmp, job, job["end_of_turn_id"])
        model_cfg = None
    elif job.get("lora"):
        from peft import PeftModel

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job["args"]["precision"],
                                                                     torch.float32)
        base = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype)
        merged = PeftModel.from_pretrained(base, str(tmp)).merge_and_unload()
        shutil.rmtree(tmp)
        merged.save_pretrained(str(tmp))
        model_cfg = merged.generation_config
    else:
        model_cfg = trainer.model.generation_config
    if model_cfg is not None:
        eos = model_cfg.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if job["end_of_turn_id"] not in eos:
            model_cfg.eos_token_id = [job["end_of_turn_id"], *eos]
        model_cfg.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    atomic_write_json(tmp / "posttrain.json", {"phase": job["phase"], "fingerprint": job["fingerprint"]})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def run(job: dict) -> Path:
    trainer = build_trainer(job)
    resume = last_complete_checkpoint(Path(job["phase_dir"]) / "run")
    if resume is not None:
        print(f"resuming {job['phase']} from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        history = Path(job["phase_dir"]) / "metrics.jsonl"
        tmp = history.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(h) + "\n" for h in trainer.state.log_history))
        os.replace(tmp, history)
    return save_final(trainer, job)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phi_lib.posttrain.train", description=__doc__)
    ap.add_argument("--job", required=True, help="job.json written by the stage")
    ap.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = ap.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    job = read_json(args.job)
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:  # before the heavy imports: a bad job fails in a second
        raise ValueError(f"{args.job}: the job lacks {', '.join(missing)} (written by PosttrainStage)")
    if job.get("deepspeed") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import deepspeed  # before the model loads: ZeRO-3 partitions it at load, over all ranks

        deepspeed.init_distributed()
    final = run(job)
    print(f"saved {job['phase']} model: {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
