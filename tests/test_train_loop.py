"""Stage 05 training on a tiny phi over real packed web text: the loss falls, checkpoints load
in transformers, a kill -9 resumes onto the same loss curve bit for bit, a NaN stops with
the last good checkpoint intact, and the finetune starts from the pretraining checkpoint."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from phi_lib.train import checkpoint as ckpt
from phi_lib.train.errors import TrainError
from phi_lib.train.launcher import command, launch, prepare
from phi_lib.train.loop import Trainer
from phi_lib.train.metrics import read_metrics
from test_train_fixtures import build_tiny_mix, tiny_mix, train_config  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_mix, tmp_path_factory):  # noqa: F811
    """An uninterrupted 8-step run (in this process)."""
    tmp = tmp_path_factory.mktemp("train_ref")
    cfg = train_config(tmp, tiny_mix, "ref")
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    Trainer(cfg, out).run()
    return cfg, out


def test_loss_decreases_and_metrics_are_logged(reference):
    cfg, out = reference
    recs = read_metrics(out / "metrics.jsonl")
    train = [r["train_loss"] for r in recs if r.get("train_loss") is not None]
    val = [r["val_loss"] for r in recs if r.get("val_loss") is not None]
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert train[-1] < train[0] - 0.3, train
    assert val[-1] < val[0], val
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in recs)
    assert recs[-1]["tokens"] == 8 * 8 * 64
    # the linear schedule: warmup 2 steps to 3e-3, then down to 0 at step 8
    assert [round(r["lr"], 6) for r in recs[:3]] == [0.0, 0.0015, 0.003]
    # keep_last 2 with save_every 4: step-4 and step-8, nothing half-written
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [4, 8]
    state = ckpt.read_state(out / "checkpoints" / "step-8")
    assert state["sample"] == 8 * 8 and state["step"] == 8


def test_checkpoint_loads_in_transformers_with_the_same_logits(reference):
    from transformers import AutoModelForCausalLM

    from phi_lib.model import PhiForCausalLM

    _, out = reference
    step = out / "checkpoints" / "step-8"
    hf = AutoModelForCausalLM.from_pretrained(step, dtype=torch.float32).eval()
    ours = PhiForCausalLM.from_pretrained(step).eval()
    ids = torch.randint(0, 50000, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    # the training weights themselves, not a re-initialised model
    assert not torch.equal(ckpt.load_weights(step)["lm_head.weight"],
                           ckpt.load_weights(out / "checkpoints" / "step-4")["lm_head.weight"])


def test_resume_after_kill_9_gives_the_same_loss_curve_bit_exact(reference, tiny_mix, tmp_path):  # noqa: F811
    ref_cfg, ref_out = reference
    cfg = train_config(tmp_path, tiny_mix, "killed")
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(command(cfg, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-4").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before step 4"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / "step-8").exists(), "killed too late to test a resume"
    launch(cfg, out, on_line=None)
    log = (out / "train.log").read_text()
    assert "resumed from step-4" in log
    ref = read_metrics(ref_out / "metrics.jsonl")
    got = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))  # killed run's extra lines dropped
    for key in ("train_loss", "val_loss", "grad_norm", "lr"):
        assert [r.get(key) for r in got] == [r.get(key) for r in ref], key
    a = ckpt.load_weights(ref_out / "checkpoints" / "step-8")
    b = ckpt.load_weights(out / "checkpoints" / "step-8")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_the_last_checkpoint_intact(tiny_mix, tmp_path):  # noqa: F811
    cfg = train_config(tmp_path, tiny_mix, "nan", lr=1e30, schedule="constant", warmup_steps=0,
                       save_every=1, keep_last=5, max_steps=6, eval_every=100)
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    with pytest.raises(TrainError, match=r"non-finite loss .* at step 2.*step-1 \(untouched\)"):
        launch(cfg, out, on_line=None)
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [1]
    weights = ckpt.load_weights(out / "checkpoints" / "step-1")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_finetune_starts_from_the_pretraining_checkpoint(tmp_path):
    # stage 03 packs the finetune set (here the web source again) into 03_mix/finetune/, at
    # most the 4 steps x 8 sequences x 64 tokens the finetune consumes (whole documents)
    ft_mix = {"finetune.source": "web", "finetune.total_tokens": 4 * 8 * 64}
    mix_dir = build_tiny_mix(tmp_path / "mix", **ft_mix)
    packed = json.loads((mix_dir / "mix.json").read_text())["finetune"]
    assert packed["source"] == "web" and 0 < packed["splits"]["train"]["n_windows"] <= 32
    cfg = train_config(tmp_path, mix_dir, "ft", mix=ft_mix, max_steps=4,
                       save_every=2, keep_last=1, eval_every=2,
                       **{"finetune.enabled": True, "finetune.max_steps": 4,
                          "finetune.warmup_steps": 2, "finetune.lr": 1e-3,
                          "finetune.global_batch_size": 8, "finetune.save_every": 2,
                          "finetune.weight_decay": 0.01})
    out = cfg.run_dir / "05_train"
    files = prepare(cfg, out)
    assert files["finetune_data"] == cfg.run_dir / "03_mix" / "finetune"
    Trainer(cfg, out).run()
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["phase"] for r in recs] == ["pretrain"] * 4 + ["finetune"] * 4
    ft = [r for r in recs if r["phase"] == "finetune"]
    assert [round(r["lr"], 6) for r in ft[:3]] == [0.0, 0.0005, 0.001]  # its own warmup
    # it continues from pretraining (not from a fresh init at ~10.86)
    assert ft[0]["train_loss"] < recs[0]["train_loss"] - 0.2
    # step-4 (the pretraining's end) survives keep_last=1; step-8 is the finetuned model
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [4, 8]
    assert ckpt.read_state(out / "checkpoints" / "step-8")["phase"] == "finetune"
