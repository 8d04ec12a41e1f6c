"""Stage 08's launcher files and commands, written from the params: the ZeRO JSON (batch and
precision `auto`, so TRL's Trainer fills them), the accelerate config, the command lines, and
a config that cannot split its batch over the processes is refused naming the key."""
import json

import pytest
import yaml

from phi_lib.config import ConfigError, load
from phi_lib.posttrain import launch

pytestmark = pytest.mark.unit


def _pc(**over):
    return load({}, {f"posttrain.{k}": v for k, v in over.items()}).posttrain


def test_zero3_accelerate_files(tmp_path):
    pc = _pc(launcher="accelerate", num_gpus="8", zero_stage="3", precision="bf16")
    files = launch.prepare(pc, tmp_path, {"phase": "dpo"})
    ds = json.loads(files["deepspeed"].read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # HF save
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    acc = yaml.safe_load(files["accelerate"].read_text())
    assert (acc["distributed_type"], acc["num_processes"]) == ("DEEPSPEED", 8)
    assert "mixed_precision" not in acc  # accelerate refuses it beside a ZeRO JSON (which has it)
    assert acc["deepspeed_config"] == {"deepspeed_config_file": str(files["deepspeed"]), "zero3_init_flag": True}
    assert json.loads(files["job"].read_text())["deepspeed"] == str(files["deepspeed"])
    cmd = launch.command(pc, tmp_path)
    assert cmd[1:] == ["launch", "--config_file", str(tmp_path / "accelerate.yaml"), "-m",
                       "phi_lib.posttrain.train", "--job", str(tmp_path / "job.json")]


def test_zero2_deepspeed_launcher_and_plain_multi_gpu(tmp_path):
    pc = _pc(launcher="deepspeed", num_gpus="4", zero_stage="2", master_port="29600")
    launch.prepare(pc, tmp_path, {"phase": "sft"})
    cmd = launch.command(pc, tmp_path)
    assert cmd[1:5] == ["--num_gpus", "4", "--master_port", "29600"]
    assert cmd[-4:] == ["--module", "phi_lib.posttrain.train", "--job", str(tmp_path / "job.json")]
    ddp = _pc(launcher="accelerate", num_gpus="2", zero_stage="0")
    files = launch.prepare(ddp, tmp_path / "ddp", {"phase": "sft"})
    assert yaml.safe_load(files["accelerate"].read_text())["distributed_type"] == "MULTI_GPU"
    assert json.loads(files["job"].read_text())["deepspeed"] is None
    single = _pc()
    assert launch.command(single, tmp_path)[1:4] == ["-u", "-m", "phi_lib.posttrain.train"]


def test_batches_that_do_not_split_over_the_processes_are_refused():
    with pytest.raises(ConfigError, match=r"^posttrain\.dpo\.global_batch_size: 64 is not a multiple "
                                          r"of micro_batch_size x processes = 2 x 3"):
        load({}, {"posttrain.launcher": "deepspeed", "posttrain.num_gpus": "3",
                  "posttrain.sft.global_batch_size": "96"})
    with pytest.raises(ConfigError, match=r"^posttrain\.hostfile: a multi-node run"):
        load({}, {"posttrain.launcher": "deepspeed", "posttrain.num_nodes": "2"})
    with pytest.raises(ConfigError, match=r"^posttrain\.sft_sources: mixture weights must sum to 1"):
        load({"posttrain": {"sft_sources": {"a": {"path": "x", "weight": 0.5}}}})
    with pytest.raises(ConfigError, match=r"^posttrain\.preference\.prompts_from: unknown prompt source"):
        load({}, {"posttrain.preference.prompts_from": "nowhere"})


def test_a_failed_phase_raises_with_its_log_tail(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"phase": "sft"}))  # no model: the program fails
    with pytest.raises(launch.PosttrainError, match=r"training exited with code 1") as e:
        launch.launch(_pc(), tmp_path, on_line=None)
    assert "the job lacks phase_dir, model" in str(e.value) and (tmp_path / "train.log").is_file()
