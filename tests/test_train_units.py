"""Stage 05 plumbing that needs no training: schedules, DeepSpeed JSON, checkpoints dirs,
error classification, launch commands and host checks."""
import math
from pathlib import Path

import pytest
import torch

from phi_lib.config import ConfigError, load
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.deepspeed_config import ds_config
from phi_lib.train.errors import LaunchError, describe, is_oom
from phi_lib.train.launcher import check_hosts, command, commands, prepare, read_hostfile
from phi_lib.train.schedule import lr_at

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.unit


def test_schedules_match_the_papers_at_given_steps():
    # phi-1.5: constant 2e-4, no warmup
    for step in (0, 1, 10_000, 35_762):
        assert lr_at(step, schedule="constant", lr=2e-4, warmup_steps=0, max_steps=35_763) == 2e-4
    # phi-1: linear warmup over 750 steps to 1e-3, then linear decay to 0 at 36K
    phi1 = dict(schedule="linear", lr=1e-3, warmup_steps=750, max_steps=36_000)
    assert lr_at(0, **phi1) == 0.0
    assert lr_at(375, **phi1) == pytest.approx(5e-4)
    assert lr_at(750, **phi1) == pytest.approx(1e-3)
    assert lr_at(750 + (36_000 - 750) // 2, **phi1) == pytest.approx(5e-4, rel=1e-4)
    assert lr_at(36_000, **phi1) == 0.0
    # the CodeExercises finetune: warmup 50 to 1e-4 over 6K steps
    ft = dict(schedule="linear", lr=1e-4, warmup_steps=50, max_steps=6000)
    assert lr_at(25, **ft) == pytest.approx(5e-5)
    assert lr_at(3025, **ft) == pytest.approx(5e-5)
    # cosine: half-way through the decay is half the peak
    cos = dict(schedule="cosine", lr=1e-3, warmup_steps=100, max_steps=1100)
    assert lr_at(600, **cos) == pytest.approx(5e-4)
    assert lr_at(100 + 250, **cos) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_deepspeed_config_from_the_phi15_params():
    cfg = load(ROOT / "params" / "phi-1.5.yaml")
    ds = ds_config(cfg.train)
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_batch_size"] == 2048
    # 2048 sequences = micro 16 x 32 GPUs x accumulation 4
    assert ds["gradient_accumulation_steps"] == 2048 // (16 * 32)
    assert ds["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                          "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1.0}
    assert "bf16" not in ds
    assert ds["zero_optimization"]["reduce_bucket_size"] == cfg.train.reduce_bucket_size
    assert ds["zero_optimization"]["overlap_comm"] is True
    bf = ds_config(load(ROOT / "params" / "phi-1.5.yaml", {"train.precision": "bf16"}).train)
    assert bf["bf16"] == {"enabled": True} and "fp16" not in bf


def test_indivisible_global_batch_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.global_batch_size: 100 is not a multiple"):
        load(ROOT / "params" / "phi-1.5.yaml", {"train.global_batch_size": 100})


def test_finetune_without_its_packed_set_fails_before_anything_is_written(tmp_path):
    cfg = load(ROOT / "params" / "smoke.yaml", {
        "run.output_root": str(tmp_path), "mix.finetune.source": "textbooks",
        "train.finetune.enabled": "true", "train.finetune.max_steps": "2",
        "train.finetune.global_batch_size": "4"})
    out = cfg.run_dir / "05_train"
    with pytest.raises(FileNotFoundError, match=r"^train\.finetune\.enabled: the finetune set "
                       r".*03_mix/finetune has not been packed: run stage 03 with "
                       r"mix\.finetune\.source set \(now 'textbooks'\)"):
        prepare(cfg, out)
    assert not out.exists()


def test_latest_checkpoint_ignores_partial_dirs_and_prune_keeps_last_n(tmp_path):
    from phi_lib.hf_models import latest_checkpoint

    root = tmp_path / "05_train" / "checkpoints"
    for step in (2, 4, 6, 8):
        tmp = ckpt.tmp_dir(root, step)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text("{}")
        ckpt.finalize(root, step, {"step": step})
    half = ckpt.tmp_dir(root, 10)  # a kill -9 while writing step 10
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert ckpt.latest(root).name == "step-8"
    assert latest_checkpoint(tmp_path).name == "step-8"  # what stage 06 loads
    assert ckpt.prune(root, keep_last=2, protect=(2,)) == [4]
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 6, 8]
    ckpt.clean_partial(root)
    assert not half.exists()


def test_a_failed_cpu_allocation_is_reported_as_oom(tmp_path):
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**60, dtype=torch.uint8)
    assert is_oom(info.value)
    msg = describe(info.value, micro_batch_size=16, last_good=tmp_path / "step-4")
    assert msg["kind"] == "oom"
    assert "micro_batch_size=16" in msg["message"] and "step-4" in msg["message"]
    assert not is_oom(ValueError("bad value"))


def test_unreachable_host_in_hostfile_fails_before_launch(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=8\nnode-b.invalid slots=8  # second node\n")
    assert read_hostfile(hostfile) == [("localhost", 8), ("node-b.invalid", 8)]
    with pytest.raises(LaunchError, match="node-b.invalid"):
        check_hosts(read_hostfile(hostfile), timeout=2)
    bad = tmp_path / "bad"
    bad.write_text("node-a slots=eight\n")
    with pytest.raises(LaunchError, match="bad:1"):
        read_hostfile(bad)


def test_launch_with_unreachable_host_leaves_checkpoints_untouched(tmp_path):
    from phi_lib.train.launcher import launch

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\nnode-b.invalid slots=2\n")
    cfg = load(ROOT / "params" / "smoke.yaml", {
        "run.output_root": str(tmp_path), "train.launcher": "deepspeed", "train.num_gpus": 2,
        "train.num_nodes": 2, "train.hostfile": str(hostfile), "train.global_batch_size": 16})
    out = cfg.run_dir / "05_train"
    good = out / "checkpoints" / "step-20"
    good.mkdir(parents=True)
    (good / "config.json").write_text("{}")
    (out / "train_config.yaml").write_text("prepared")  # launch must fail before reading it
    with pytest.raises(LaunchError, match="node-b.invalid.*nothing was started"):
        launch(cfg, out, on_line=None)
    assert (good / "config.json").read_text() == "{}"


def test_launcher_commands():
    cfg = load(ROOT / "params" / "phi-1.5.yaml", {"train.hostfile": "/etc/hostfile"})
    cmd = command(cfg, Path("/runs/x/05_train"))
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:3] == ["--num_gpus", "8"] and "--hostfile" in cmd and "--num_nodes" in cmd
    assert cmd[cmd.index("--module") + 1] == "phi_lib.train"
    single = command(load(ROOT / "params" / "smoke.yaml"), Path("/o"))
    assert single[1:4] == ["-u", "-m", "phi_lib.train"]
    tr = load(ROOT / "params" / "phi-1.5.yaml", {"train.launcher": "torchrun", "train.num_nodes": 1,
                                                 "train.global_batch_size": 1024})
    assert Path(command(tr, Path("/o"))[0]).name == "torchrun"
    assert len(commands(tr, Path("/o"))) == 1


def test_summary_adds_the_tokens_of_every_phase(tmp_path):
    """Each phase counts its tokens from 0; the manifest's total is their sum."""
    import json

    from phi_lib.train.summary import summarize

    recs = [{"step": s, "phase": "pretrain", "train_loss": 10.0 - s, "tokens": 512 * s,
             "tokens_per_s": 100.0, "mfu": 0.1} for s in (1, 2, 3, 4)]
    recs += [{"step": s, "phase": "finetune", "train_loss": 5.0, "val_loss": 5.5,
              "tokens": 256 * (s - 4), "tokens_per_s": 90.0, "mfu": 0.1} for s in (5, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = summarize(tmp_path)["metrics"]
    assert m["tokens"] == 4 * 512 + 2 * 256 and m["finetune_tokens"] == 2 * 256
    assert m["steps"] == 6 and m["finetune_final_val_loss"] == 5.5 and m["first_train_loss"] == 9.0


# ----------------------------------------------------------------------------- provenance
def _state(cfg, step: int, phase: str = "pretrain") -> dict:
    from phi_lib.train.fingerprint import phase_fingerprint

    return {"step": step, "phase": phase, "fingerprint": phase_fingerprint(cfg, phase).to_dict()}


def test_which_changes_a_checkpoint_may_resume_across(tmp_path):
    from phi_lib.train.fingerprint import blocking_changes, phase_of
    from phi_lib.train.phases import plan_phases

    (tmp_path / "smoke" / "03_mix" / "finetune").mkdir(parents=True)
    (tmp_path / "smoke" / "03_mix" / "finetune" / "mix.json").write_text("{}")

    def _blocking(old: dict, new: dict, step: int, phase: str = "pretrain") -> list[str]:
        base = {"run.output_root": str(tmp_path)}
        a = load(ROOT / "params" / "smoke.yaml", {**base, **old})
        b = load(ROOT / "params" / "smoke.yaml", {**base, **new})
        state = _state(a, step, phase)
        return blocking_changes(state, b, phase_of(state, plan_phases(b, tmp_path)))

    # the change: another lr is another run
    assert _blocking({}, {"train.lr": "3e-3"}, 20) == ["train.lr"]
    # max_steps under linear decay changes the lr of every step: a change
    assert _blocking({}, {"train.max_steps": "80"}, 20) == ["train.max_steps"]
    # under the constant schedule the steps trained so far are what a longer run trains
    const = {"train.schedule": "constant"}
    assert _blocking(const, {**const, "train.max_steps": "80"}, 40) == []
    assert _blocking(const, {**const, "train.max_steps": "30"}, 40) == ["train.max_steps"]  # past the end
    # stop_at: the schedule runs over max_steps wherever the run stops (phi-1-base -> 36K)
    assert _blocking({"train.stop_at": "20"}, {}, 20) == []
    assert _blocking({}, {"train.stop_at": "30"}, 40) == ["train.stop_at"]
    # not in a checkpoint's fingerprint: pruning, selection, operational fields
    assert _blocking({}, {"train.keep_last": "9", "train.finetune.select_by": "last",
                          "train.log_every": "1", "train.tensorboard": "false"}, 40) == []
    assert _blocking({}, {"model.hidden_size": "256"}, 40) == ["model.hidden_size"]
    assert _blocking({}, {"run.seed": "7"}, 40) == ["run.seed"]
    # a pretraining checkpoint does not depend on the finetune's settings; a finetune one does
    ft = {"train.finetune.enabled": "true", "train.finetune.global_batch_size": "4",
          "mix.finetune.source": "textbooks"}
    assert _blocking(ft, {**ft, "train.finetune.lr": "1e-3"}, 40) == []
    assert _blocking(ft, {**ft, "train.finetune.lr": "1e-3"}, 45, "finetune") == ["train.finetune.lr"]
    assert _blocking(ft, {**ft, "train.lr": "3e-3"}, 45, "finetune") == ["train.lr"]


def test_a_checkpoint_without_a_fingerprint_is_not_resumed(tmp_path):
    from phi_lib.provenance import StaleArtifact
    from phi_lib.train.fingerprint import check_resume

    cfg = load(ROOT / "params" / "smoke.yaml", {"run.output_root": str(tmp_path)})
    out = cfg.run_dir / "05_train"
    tmp = ckpt.tmp_dir(out / "checkpoints", 40)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text("{}")
    ckpt.finalize(out / "checkpoints", 40, {"step": 40, "phase": "pretrain"})  # an older run's
    with pytest.raises(StaleArtifact, match=r"checkpoint step-40 .*\(no fingerprint\) changed"):
        check_resume(cfg, out)


def test_phi_1_base_is_the_24k_checkpoint_of_the_36k_schedule(tmp_path):
    from phi_lib.train.phases import plan_phases

    base = load(ROOT / "params" / "phi-1-base.yaml", {"run.output_root": str(tmp_path)})
    (pre,) = plan_phases(base, tmp_path)
    assert (pre.steps, pre.schedule_steps, pre.last_step) == (24000, 36000, 24000)
    # its last update's lr is the 36K run's at that step, not a decay to 0 over 24K
    lr = lr_at(23999, schedule="linear", lr=1e-3, warmup_steps=750, max_steps=pre.schedule_steps)
    assert lr == pytest.approx(1e-3 * (36000 - 23999) / (36000 - 750))
    assert lr_at(23999, schedule="linear", lr=1e-3, warmup_steps=750, max_steps=24000) < 1e-7


def test_finetune_start_and_stop_at_are_checked(tmp_path):
    ft = {"train.finetune.enabled": "true", "train.finetune.global_batch_size": "4",
          "mix.finetune.source": "textbooks"}
    with pytest.raises(ConfigError, match=r"^train\.stop_at: must be in 1\.\.max_steps \(40\), got 50"):
        load(ROOT / "params" / "smoke.yaml", {"train.stop_at": "50"})
    with pytest.raises(ConfigError, match=r"^train\.finetune\.from_step: 30 is past the "
                                          r"pretraining's last step 20"):
        load(ROOT / "params" / "smoke.yaml", {**ft, "train.stop_at": "20",
                                             "train.finetune.from_step": "30"})
    with pytest.raises(ConfigError, match=r"^train\.finetune\.select_by: unknown value 'bleu'"):
        load(ROOT / "params" / "smoke.yaml", {"train.finetune.select_by": "bleu"})
    cfg = load(ROOT / "params" / "smoke.yaml", {**ft, "run.output_root": str(tmp_path),
                                                "train.stop_at": "30", "train.finetune.from_step": "20"})
    assert (cfg.train.pretrain_steps, cfg.train.finetune_start) == (30, 20)


def _fake_ckpt(root: Path, step: int, phase: str, val_loss=None, val_step=None) -> None:
    tmp = ckpt.tmp_dir(root, step)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text("{}")
    ckpt.finalize(root, step, {"step": step, "phase": phase, "val_loss": val_loss,
                               "val_step": val_step or (step if val_loss is not None else None)})


def test_selection_picks_the_lowest_val_loss_and_pruning_keeps_it(tmp_path):
    import json

    from phi_lib.train.select import check_selectable, protected_steps, select

    (tmp_path / "03_mix" / "finetune" / "val").mkdir(parents=True)
    (tmp_path / "03_mix" / "finetune" / "mix.json").write_text("{}")
    cfg = load(ROOT / "params" / "smoke.yaml", {
        "run.output_root": str(tmp_path.parent), "run.name": tmp_path.name,
        "mix.finetune.source": "textbooks", "train.finetune.enabled": "true",
        "train.finetune.global_batch_size": "4", "train.finetune.max_steps": "5",
        "train.finetune.from_step": "20"})
    # selecting by val loss needs a val split of the finetune set: known before training
    with pytest.raises(ValueError, match=r"^train\.finetune\.select_by=val_loss: the finetune "
                                         r"set has no validation windows"):
        check_selectable(cfg)
    (tmp_path / "03_mix" / "finetune" / "val" / "index.json").write_text(json.dumps({"n_windows": 3}))
    check_selectable(cfg)
    out = cfg.run_dir / "05_train"
    root = out / "checkpoints"
    for step, phase, val in ((20, "pretrain", 3.0), (40, "pretrain", 2.9), (41, "finetune", 2.5),
                             (42, "finetune", 2.1), (43, "finetune", 2.3), (44, "finetune", 2.4)):
        _fake_ckpt(root, step, phase, val)
        ckpt.prune(root, keep_last=1, protect=protected_steps(cfg, out))  # as the loop does
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [20, 42, 44]  # start, best, last
    sel = select(cfg, out)
    assert (sel["step"], sel["value"], sel["select_by"]) == (42, 2.1, "val_loss")
    # a val loss measured at an earlier step than the checkpoint's is not its val loss
    _fake_ckpt(root, 45, "finetune", val_loss=1.0, val_step=44)
    assert select(cfg, out)["step"] == 42
    cfg.train.finetune.select_by = "last"
    assert select(cfg, out)["step"] == 45


def test_the_selected_checkpoint_is_what_checkpoint_resolves_to(tmp_path):
    from phi_lib.hf_models import resolve_model
    from phi_lib.trained import selected_checkpoint, write_selected

    out = tmp_path / "05_train"
    for step in (4, 8):
        _fake_ckpt(out / "checkpoints", step, "finetune")
    assert selected_checkpoint(tmp_path) == out / "checkpoints" / "step-8"  # none selected yet
    write_selected(out, {"step": 4, "checkpoint": "checkpoints/step-4"})
    assert resolve_model("checkpoint", tmp_path) == str(out / "checkpoints" / "step-4")
    write_selected(out, {"step": 6, "checkpoint": "checkpoints/step-6"})
    with pytest.raises(FileNotFoundError, match=r"selected\.json selects checkpoints/step-6, which "
                                                r"is not a complete checkpoint: rerun stage 05"):
        selected_checkpoint(tmp_path)
