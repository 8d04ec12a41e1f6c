"""Shared builders for the stage-05 tests: a small packed mixture of real web text (the
CCNet sample of the data folder, codegen tokenizer) and a tiny phi config over it, built
once per session (no tests in this file)."""
import os
from pathlib import Path

import pytest

from phi_lib.config import load

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {"model.preset": "phi-tiny", "model.hidden_size": 64, "model.intermediate_size": 256,
              "model.num_hidden_layers": 2, "model.num_attention_heads": 2}


def shared() -> Path:
    return Path(os.environ.get("PHI_DATA", ROOT.parent / "shared"))


def build_tiny_mix(folder: Path, seq_len: int = 64, tokenizer: str | None = None, **mix) -> Path:
    """`folder/03_mix` from ~40K tokens of real CCNet web documents, tokenized with
    `tokenizer` (default: the smoke model's codegen); `mix` overrides more `mix.*` keys, e.g.
    `**{"finetune.source": "web"}`."""
    import datasets

    from phi_lib.data import MixBuilder
    from phi_lib.io import read_jsonl

    texts = [r["text"] for f in sorted((shared() / "corpora/web/dolma-ccnet-head").glob("*.jsonl.gz"))
             for r in read_jsonl(f)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder / "docs"))
    cfg = load({"run": {"name": "mix", "seed": 7, "output_root": str(folder)}},
               {"mix.sources": {"web": {"hf_dataset": str(folder / "docs")}},
                "mix.total_tokens": 40_000, "mix.seq_len": seq_len, "mix.val_fraction": 0.1,
                "mix.num_proc": 1, **{f"mix.{k}": v for k, v in mix.items()},
                **({"model.tokenizer": tokenizer} if tokenizer else {})})
    out = cfg.run_dir / "03_mix"
    out.mkdir(parents=True, exist_ok=True)
    b = MixBuilder(cfg, out, progress=False)
    b.tokenize()
    b.plan()
    b.pack()
    return out


@pytest.fixture(scope="session")
def tiny_mix(tmp_path_factory) -> Path:
    return build_tiny_mix(tmp_path_factory.mktemp("train_mix"))


def train_config(tmp: Path, mix_dir: Path, name: str = "t", mix: dict | None = None,
                 model: dict | None = None, **train):
    """A run in `tmp/<name>` over `mix_dir` (linked as its 03_mix) with the tiny model (or
    the `model.*` keys of `model`); `mix` overrides `mix.*` keys (as the run that packed
    `mix_dir` had them)."""
    run_dir = tmp / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "03_mix").exists():
        (run_dir / "03_mix").symlink_to(mix_dir)
    tiny = {f"model.{k}": v for k, v in model.items()} if model is not None else TINY_MODEL
    overrides = {"run.output_root": str(tmp), "run.name": name, **tiny,
                 "train.launcher": "single", "train.precision": "fp32", "train.schedule": "linear",
                 "train.lr": 3e-3, "train.warmup_steps": 2, "train.max_steps": 8,
                 "train.global_batch_size": 8, "train.micro_batch_size": 4,
                 "train.eval_every": 4, "train.eval_batches": 2, "train.save_every": 4,
                 "train.keep_last": 2, "train.log_every": 1, "train.tensorboard": False,
                 "train.peak_tflops": 1.0}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    overrides.update({f"mix.{k}": v for k, v in (mix or {}).items()})
    return load(ROOT / "params" / "smoke.yaml", overrides)
