"""The stage-08 training program: killed with SIGKILL mid-run, it resumes from its last
complete checkpoint and ends with the same weights as an uninterrupted run (LoRA, merged)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from phi_lib.io import atomic_write_json
from phi_lib.paths import project_root
from tests.posttrain_fixtures import CONVERSATION, job, tiny_model_dir, write_jsonl

pytestmark = pytest.mark.slow
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]}


def _conversations(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}
            for i in range(n)] + [{"messages": CONVERSATION}]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path):
    from phi_lib.posttrain.train import last_complete_checkpoint, run

    start = tiny_model_dir(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", _conversations(11))
    settings = dict(max_steps=24, save_steps=2, lora=LORA, learning_rate=1e-2)
    reference = run(job("sft", tmp_path / "a", start, data, **settings))

    b = tmp_path / "b"
    b.mkdir()
    atomic_write_json(b / "job.json", job("sft", b, start, data, **settings))
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    proc = subprocess.Popen([sys.executable, "-m", "phi_lib.posttrain.train", "--job", str(b / "job.json")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # look, do not touch: last_complete_checkpoint() removes cut checkpoints, one being written too
    while not list(b.glob("run/checkpoint-*/trainer_state.json")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (b / "model").exists(), "the run finished before the kill: nothing was tested"
    cut = last_complete_checkpoint(b / "run")
    assert cut is not None and int(cut.name.split("-")[1]) < 24

    resumed = run(job("sft", b, start, data, **settings))
    state = (b / "metrics.jsonl").read_text()
    assert '"step": 24' in state
    want, got = _weights(reference), _weights(resumed)
    assert set(want) == set(got) and not any("lora" in k for k in got)  # merged, plain HF names
    import torch

    base = _weights(start)
    assert any(not torch.equal(base[k], got[k]) for k in got)  # training changed the weights
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6), k
