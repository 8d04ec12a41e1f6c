"""The phi-2 and phi-3 recipes, dry: each params file builds its model on the meta device at the
published size, its ZeRO stage / micro batch / activation checkpointing are the planner's fit
for the 80 GB GPUs it names, and it produces its DeepSpeed config and launch command without
running anything."""
import json

import pytest
import torch

from phi_lib.config import load
from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.planning import fit_training, memory_per_gpu
from phi_lib.paths import project_root
from phi_lib.train.launcher import CONFIG_FILE, command, prepare

pytestmark = pytest.mark.unit
MINI, MEDIUM = 3_821_079_552, 13_960_238_080
RECIPES = {  # file: (published parameters, tokenizer, context, training tokens)
    "phi-2.yaml": (2_779_683_840, "codegen-350M-mono", 2048, 1_400_000_000_000),
    "phi-3-mini.yaml": (MINI, "phi-3-mini", 4096, 3_300_000_000_000),
    "phi-3-mini-128k.yaml": (MINI, "phi-3-mini", 131072, None),
    "phi-3.5-mini.yaml": (MINI, "phi-3-mini", 131072, 3_400_000_000_000),
    "phi-3-medium.yaml": (MEDIUM, "phi-3-mini", 4096, 4_800_000_000_000),
    "phi-3-medium-128k.yaml": (MEDIUM, "phi-3-mini", 131072, None),
}


def recipe(name, tmp_path):
    return load(project_root() / "params" / name, {"run.output_root": str(tmp_path)})


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_builds_its_published_model(name, tmp_path):
    size, tokenizer, context, tokens = RECIPES[name]
    cfg = recipe(name, tmp_path)
    model_cfg = PhiConfig.from_model_config(cfg.model)
    with torch.device("meta"):
        assert sum(p.numel() for p in PhiForCausalLM(model_cfg).parameters()) == size
    assert model_cfg.max_position_embeddings == context >= cfg.mix.seq_len
    assert cfg.model.tokenizer == tokenizer and len(load_tokenizer(tokenizer)) <= model_cfg.vocab_size
    if tokens is not None:
        assert cfg.mix.total_tokens == tokens
        steps = -(-tokens // (cfg.train.global_batch_size * cfg.mix.seq_len))
        assert cfg.train.max_steps == steps  # the budget, in whole steps
    if name.startswith("phi-3"):
        assert cfg.train.precision == "bf16"


@pytest.mark.parametrize("name", list(RECIPES))
def test_parallelism_is_the_planners_fit(name, tmp_path):
    cfg = recipe(name, tmp_path)
    tc = cfg.train
    model_cfg = PhiConfig.from_model_config(cfg.model)
    fit = fit_training(model_cfg, n_gpus=tc.world_size, seq_len=cfg.mix.seq_len,
                       global_batch_size=tc.global_batch_size, precision=tc.precision)
    assert (tc.zero_stage, tc.micro_batch_size, tc.activation_checkpointing) == (
        fit["zero_stage"], fit["micro_batch_size"], fit["activation_checkpointing"]), fit
    gb = memory_per_gpu(model_cfg, tc.zero_stage, tc.precision, tc.world_size, tc.micro_batch_size,
                        cfg.mix.seq_len, activation_checkpointing=tc.activation_checkpointing)["total"]
    assert gb <= 0.85 * 80  # fits the 80 GB A100/H100 `train.plan_gpu` names, with headroom
    assert cfg.model.gpus == tc.world_size  # notebook 04 plans memory for the GPUs stage 05 uses


@pytest.mark.parametrize("name", list(RECIPES))
def test_dry_run_writes_deepspeed_config_and_launch_command(name, tmp_path):
    cfg = recipe(name, tmp_path)
    tc = cfg.train
    out = tmp_path / "05_train"
    files = prepare(cfg, out)
    ds = json.loads(files["deepspeed"].read_text())
    assert ds["train_batch_size"] == tc.global_batch_size
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * tc.world_size == \
        tc.global_batch_size
    assert ds["zero_optimization"]["stage"] == tc.zero_stage
    assert ds.get("bf16", {}).get("enabled", False) == (tc.precision == "bf16")
    cmd = command(cfg, out)
    assert cmd[0].endswith("deepspeed") and cmd[cmd.index("--num_gpus") + 1] == str(tc.num_gpus)
    assert cmd[cmd.index("--num_nodes") + 1] == str(tc.num_nodes) and tc.num_nodes > 1
    assert cmd[cmd.index("--hostfile") + 1] == str(project_root() / "params" / tc.hostfile)
    assert cmd[-4:] == ["--config", str(out / CONFIG_FILE), "--out", str(out)]
    assert "--module" in cmd and cmd[cmd.index("--module") + 1] == "phi_lib.train"
    # what the launched ranks read is this very config
    assert load(files["config"]).hash() == cfg.hash()
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
