"""Stage 05 training on a tiny phi over real packed web text: the loss falls, checkpoints load
in transformers, a kill -9 resumes onto the same loss curve bit for bit (also across a
legitimate continuation), a checkpoint made with another config stops training before any
work, a resumed optimizer takes the config's hyperparameters, a NaN stops with the last good
checkpoint intact, and the finetune starts from the named pretraining step and selects the best
of its checkpoints."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from phi_lib.provenance import StaleArtifact, file_digest
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.errors import TrainError
from phi_lib.train.launcher import command, launch, prepare, write_config
from phi_lib.train.loop import Trainer
from phi_lib.train.metrics import read_metrics
from phi_lib.train.schedule import lr_at
from test_train_fixtures import build_tiny_mix, tiny_mix, train_config  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent

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


def kill_at(cfg, out, step: int) -> None:
    """Start training `cfg` as a subprocess and kill -9 it once checkpoint `step` appears."""
    write_config(cfg, out)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(command(cfg, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{step}").exists():
        assert proc.poll() is None and time.time() < deadline, f"training ended before step {step}"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_resume_after_kill_9_gives_the_same_loss_curve_bit_exact(reference, tiny_mix, tmp_path):  # noqa: F811
    ref_cfg, ref_out = reference
    cfg = train_config(tmp_path, tiny_mix, "killed")
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    kill_at(cfg, out, 4)
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


def snapshot(out: Path) -> dict:
    """Every file of a stage folder and its content digest (to show nothing was touched)."""
    return {str(f.relative_to(out)): file_digest(f) for f in sorted(out.rglob("*")) if f.is_file()}


def test_a_checkpoint_made_with_another_config_stops_training_before_any_work(reference, tmp_path):
    """The issue's bug: over a finished run, a changed lr "ran" without training (the
    checkpoint at max_steps made the trainer skip) and kept the old run's metrics."""
    ref_cfg, ref_out = reference
    shutil.copytree(ref_out, tmp_path / "t" / "05_train")
    (tmp_path / "t" / "03_mix").symlink_to(ref_cfg.run_dir / "03_mix")
    out = tmp_path / "t" / "05_train"
    before = snapshot(out)
    for over, key in (({"lr": 9e-3}, "train.lr"),
                      ({"max_steps": 12}, "train.max_steps"),  # linear decay: every lr changes
                      ({"stop_at": 6}, "train.stop_at"),  # the checkpoint is past the new end
                      ({"eval_batches": 3}, "train.eval_batches")):
        cfg = train_config(tmp_path, ref_cfg.run_dir / "03_mix", "t", **over)
        with pytest.raises(StaleArtifact, match=rf"checkpoint step-8 in .*checkpoints was made with "
                           rf"a different config \({key} changed\): keep it by giving this config "
                           rf"a new `run.name`, or discard it and recompute with --force"):
            Trainer(cfg, out).run()
        with pytest.raises(StaleArtifact, match=key):  # launch() stops before starting anything
            launch(cfg, out, on_line=None)
    model = train_config(tmp_path, ref_cfg.run_dir / "03_mix", "t", **{})
    model.model.hidden_size = 128
    with pytest.raises(StaleArtifact, match=r"model\.hidden_size changed"):
        Trainer(model, out).run()
    assert snapshot(out) == before  # no file written, not even train_config.yaml or a log line
    # what changes no checkpoint and no metrics row is not a change for them
    same = train_config(tmp_path, ref_cfg.run_dir / "03_mix", "t", keep_last=3, log_every=2,
                        **{"finetune.select_by": "last"})
    assert Trainer(same, out).run() == out / "checkpoints" / "step-8"  # finished: nothing to do
    assert snapshot(out) == before


def test_resumed_optimizer_takes_its_hyperparameters_from_the_config(reference, tmp_path):
    """Loading the optimizer state restores the saved run's lr/betas/eps/weight decay; the
    config's must win (and the lr is the schedule's at the restored step)."""
    ref_cfg, ref_out = reference
    step4 = tmp_path / "step-4"
    shutil.copytree(ref_out / "checkpoints" / "step-4", step4)
    saved = torch.load(step4 / "training_state.pt", weights_only=False)
    for g in saved["optimizer"]["param_groups"]:  # another run's settings in the state
        g.update(lr=0.5, initial_lr=0.5, betas=(0.5, 0.6), eps=1e-3, weight_decay=0.7)
    saved["scheduler"]["base_lrs"] = [0.5, 0.5]
    torch.save(saved, step4 / "training_state.pt")
    trainer = Trainer(ref_cfg, tmp_path / "out")
    engine, _ = trainer.build_engine(trainer.phases[0], step4)
    tc = ref_cfg.train
    want_lr = lr_at(4, schedule=tc.schedule, lr=tc.lr, warmup_steps=tc.warmup_steps,
                    max_steps=tc.max_steps)
    groups = engine.optimizer.param_groups
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in groups] == [
        (pytest.approx(want_lr), (0.9, 0.98), tc.eps, tc.weight_decay),
        (pytest.approx(want_lr), (0.9, 0.98), tc.eps, 0.0)]
    assert engine.scheduler.base_lrs == [tc.lr, tc.lr] and engine.scheduler.last_epoch == 4
    assert engine.optimizer.state_dict()["state"]  # the Adam moments were restored


def test_a_continuation_resumes_and_a_kill_9_in_it_stays_bit_exact(tiny_mix, tmp_path):  # noqa: F811
    """Growing max_steps under a constant schedule continues the run (every step trained so far
    is what a longer run would have trained); killed midway and resumed, it equals an
    uninterrupted run of the new length. The resume reads the current config file, not the
    stale one an earlier prepare() left."""
    const = dict(schedule="constant", warmup_steps=2, save_every=2, eval_every=2, keep_last=5,
                 max_steps=6)
    full = train_config(tmp_path, tiny_mix, "full", **const)
    Trainer(full, full.run_dir / "05_train").run()
    short = train_config(tmp_path, tiny_mix, "grown", **{**const, "max_steps": 2})
    out = short.run_dir / "05_train"
    Trainer(short, out).run()
    grown = train_config(tmp_path, tiny_mix, "grown", **const)
    kill_at(grown, out, 4)
    assert not (out / "checkpoints" / "step-6").exists(), "killed too late to test a resume"
    prepare(short, out)  # a stale train_config.yaml (max_steps 2) from an earlier prepare
    result = launch(grown, out, on_line=None)
    assert "resumed from step-4" in (out / "train.log").read_text()
    assert yaml.safe_load((out / "train_config.yaml").read_text())["train"]["max_steps"] == 6
    assert result.config_digest == file_digest(out / "train_config.yaml") == \
        ckpt.read_state(out / "checkpoints" / "step-6")["config_digest"]
    assert result.resumed_from == 4
    ref = read_metrics(full.run_dir / "05_train" / "metrics.jsonl")
    got = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 7))  # the killed run's extra rows dropped
    for key in ("train_loss", "val_loss", "grad_norm", "lr"):
        assert [r.get(key) for r in got] == [r.get(key) for r in ref], key
    assert {r["lr"] for r in got[2:]} == {grown.train.lr}  # the config's lr, after the warmup
    a = ckpt.load_weights(full.run_dir / "05_train" / "checkpoints" / "step-6")
    b = ckpt.load_weights(out / "checkpoints" / "step-6")
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


def test_finetune_starts_from_the_named_step_and_selects_its_best_checkpoint(tmp_path):
    """phi-1: pretraining on a schedule longer than it runs (phi-1-base is the 24K-step
    checkpoint of a 36K-step run), the finetune from a named pretraining step, and the best
    finetune checkpoint by validation loss as *the* model stages 06/07 load."""
    from phi_lib.hf_models import resolve_model
    from phi_lib.model import PhiForCausalLM
    from phi_lib.packed import PackedDataset
    from phi_lib.train.engines import lm_loss
    from phi_lib.train.select import select
    from phi_lib.trained import selected_checkpoint, write_selected

    # stage 03 packs the finetune set (here the web source again) into 03_mix/finetune/, at
    # most the 4 steps x 8 sequences x 64 tokens the finetune consumes (whole documents)
    ft_mix = {"finetune.source": "web", "finetune.total_tokens": 4 * 8 * 64}
    mix_dir = build_tiny_mix(tmp_path / "mix", **ft_mix)
    packed = json.loads((mix_dir / "mix.json").read_text())["finetune"]
    assert packed["source"] == "web" and 0 < packed["splits"]["train"]["n_windows"] <= 32
    cfg = train_config(tmp_path, mix_dir, "ft", mix=ft_mix, max_steps=8, stop_at=6,
                       save_every=3, keep_last=1, eval_every=100,
                       **{"finetune.enabled": True, "finetune.from_step": 4,
                          "finetune.max_steps": 4, "finetune.warmup_steps": 2,
                          "finetune.lr": 1e-3, "finetune.global_batch_size": 8,
                          "finetune.save_every": 1, "finetune.weight_decay": 0.01,
                          "finetune.select_by": "val_loss"})
    out = cfg.run_dir / "05_train"
    files = prepare(cfg, out)
    assert files["finetune_data"] == cfg.run_dir / "03_mix" / "finetune"
    logged = []
    Trainer(cfg, out, log=logged.append).run()
    recs = read_metrics(out / "metrics.jsonl")
    assert [(r["step"], r["phase"]) for r in recs] == [(s, "pretrain") for s in range(1, 7)] + [
        (s, "finetune") for s in range(7, 11)]
    # the pretraining stopped at 6 of an 8-step linear schedule: not decayed to 0
    assert [r["lr"] for r in recs[:6]] == [pytest.approx(lr_at(
        s, schedule="linear", lr=3e-3, warmup_steps=2, max_steps=8)) for s in range(6)]
    ft = recs[6:]
    assert [round(r["lr"], 6) for r in ft[:3]] == [0.0, 0.0005, 0.001]  # its own warmup
    # it started from step-4's weights: its first loss is theirs on its first batch
    assert any(f"starting at step 7 from {out / 'checkpoints' / 'step-4'}" in m for m in logged)
    model = PhiForCausalLM.from_pretrained(out / "checkpoints" / "step-4").eval()
    batches = PackedDataset(mix_dir / "finetune", "train").iter_batches(4, seed=cfg.run.seed)
    with torch.no_grad():
        first = [float(lm_loss(model(x), x)) for _, (x, _) in zip(range(2), batches)]
    assert ft[0]["train_loss"] == pytest.approx(sum(first) / 2, rel=1e-5)
    # each finetune checkpoint has its own step's val loss; keep_last=1 still keeps the start
    # and the best one
    val = {r["step"]: r["val_loss"] for r in ft}
    assert all(v is not None for v in val.values()), val
    best = min(val, key=lambda s: (val[s], s))
    kept = [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]
    assert kept == sorted({4, best, 10}), kept
    sel = select(cfg, out)
    assert (sel["step"], sel["checkpoint"], sel["select_by"]) == (best, f"checkpoints/step-{best}",
                                                                  "val_loss")
    assert sel["value"] == val[best]
    write_selected(out, sel)
    assert selected_checkpoint(cfg.run_dir) == out / "checkpoints" / f"step-{best}"
    assert resolve_model("checkpoint", cfg.run_dir) == str(out / "checkpoints" / f"step-{best}")
    last = train_config(tmp_path, mix_dir, "ft", mix=ft_mix, max_steps=8, stop_at=6,
                        **{"finetune.enabled": True, "finetune.from_step": 4,
                           "finetune.max_steps": 4, "finetune.select_by": "last"})
    assert select(last, out)["step"] == 10
