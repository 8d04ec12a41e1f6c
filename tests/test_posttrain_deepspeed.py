"""Stage 08 multi-process training on CPU: 2 processes through our launcher (the `deepspeed`
launcher with ZeRO-3, `accelerate launch` with ZeRO-2), the ZeRO JSON and accelerate config
written from the params, end at the weights of one process that accumulates the same global
batch (data parallelism changes where the sums happen, not what they are)."""
import pytest
import torch

from phi_lib.config import load
from phi_lib.posttrain import launch
from tests.posttrain_fixtures import CONVERSATION, PAIRS, job, tiny_model_dir, write_jsonl

pytestmark = pytest.mark.slow


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("phase, launcher, zero", [("sft", "deepspeed", 3), ("dpo", "accelerate", 2)])
def test_two_processes_match_one_accumulating_process(tmp_path, phase, launcher, zero):
    from phi_lib.posttrain.train import run

    start = tiny_model_dir(tmp_path / "tiny")
    rows = PAIRS if phase == "dpo" else [{"messages": CONVERSATION}] * 8  # one global batch = all pairs
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    pc = load({}, {"posttrain.launcher": launcher, "posttrain.num_gpus": "2",
                   "posttrain.zero_stage": str(zero), "posttrain.precision": "fp32",
                   "posttrain.sft.global_batch_size": "4", "posttrain.sft.micro_batch_size": "2",
                   "posttrain.dpo.global_batch_size": "4"}).posttrain
    launch.prepare(pc, tmp_path / "multi", job(phase, tmp_path / "multi", start, data, max_steps=3,
                                               per_device_train_batch_size=2, gradient_accumulation_steps=1))
    launch.launch(pc, tmp_path / "multi", on_line=None)
    single = run(job(phase, tmp_path / "single", start, data, max_steps=3,
                     per_device_train_batch_size=2, gradient_accumulation_steps=2))
    a, b, base = _weights(single), _weights(tmp_path / "multi" / "model"), _weights(start)
    assert set(a) == set(b)
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training moved the weights ...
    for k in a:          # ... and both runs moved them alike
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max().item())
