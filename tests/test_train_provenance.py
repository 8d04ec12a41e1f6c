"""Stage 05 provenance through the runner (papermill, fresh kernels) on a copy of the finished
smoke run, as issue 12 tried it: `--stages 05,06 --set train.lr=3e-3` over a finished run used
to "run" stage 05 in seconds without training, writing lr 0.003 into a manifest whose numbers
were the lr 1e-3 run's. Now it stops before any work, naming `train.lr`; --force retrains
(here killed -9 at its first checkpoint and resumed), and stage 06 reruns on the new model.
Operational knobs recompute nothing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi_lib.config import load
from phi_lib.io import read_json, read_jsonl
from phi_lib.provenance import file_digest
from phi_lib.run import StageFailed
from phi_lib.stages import STAGES
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.metrics import read_metrics
from phi_lib.train.schedule import lr_at

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SMALL = {"train.max_steps": "10", "train.warmup_steps": "2", "train.save_every": "5",
         "train.eval_every": "5", "train.log_every": "5"}
"""The retrain is kept short (the smoke run trains 40 steps)."""


def snapshot(folder: Path, skip=("executed.ipynb", "stage.json")) -> dict:
    return {str(f.relative_to(folder)): file_digest(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name not in skip}


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc: the kernel and the training process each start
    their own session, so a process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the runner, its kernel and the training process, as a crash would."""
    for pid in reversed(descendants(proc.pid)):  # the training process first
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_changed_lr_stops_force_retrains_a_kill_9_resumes_and_stage_06_follows(smoke_copy):
    rerun = smoke_copy
    out = rerun.run_dir / "05_train"
    before, untouched = snapshot(out), snapshot(out, skip=())
    smoke = [(r["step"], r["lr"]) for r in read_metrics(out / "metrics.jsonl") if "lr" in r]
    assert smoke == [(s, pytest.approx(lr_at(s - 1, schedule="linear", lr=1e-3, warmup_steps=5,
                                             max_steps=40))) for s in range(5, 41, 5)]

    # operational knobs: stage 05 is current, nothing is recomputed
    res = rerun(["05"], {"train.log_every": "7", "train.tensorboard": "false"})
    assert [s.status for s in res.statuses if s.stage == "05"] == ["skipped"]
    assert snapshot(out, skip=()) == untouched  # not even the executed notebook

    # the command: it stops before any work, naming the key and the ways out
    with pytest.raises(StageFailed, match=r"stage 05_train: checkpoint step-40 in .*checkpoints "
                       r"was made with a different config \(train\.lr changed\): keep it by "
                       r"giving this config a new `run.name`, or discard it .* --force"):
        rerun(["05", "06"], {"train.lr": "3e-3"})
    assert snapshot(out) == before  # checkpoints, metrics.jsonl, manifest: untouched

    # --force retrains; kill -9 the whole run at its first checkpoint
    over = {"train.lr": "3e-3", **SMALL}
    cmd = [sys.executable, "-m", "phi_lib", "run", str(ROOT / "params" / "smoke.yaml"),
           "--stages", "05", "--force", "-q", "--set", f"run.output_root={rerun.run_dir.parent}"]
    cmd += [a for k, v in over.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "step-5").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before step 5"
        time.sleep(0.05)
    kill_tree(proc)
    assert not (out / "checkpoints" / "step-10").exists(), "killed too late to test a resume"

    # the rerun resumes the forced run (its checkpoint carries the new config)
    res = rerun(["05"], over)
    assert [s.status for s in res.statuses if s.stage == "05"] == ["done"]
    assert "resumed from step-5" in (out / "train.log").read_text()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10]  # no row of the lr 1e-3 run, none twice
    assert [r["lr"] for r in rows] == [pytest.approx(lr_at(s - 1, schedule="linear", lr=3e-3,
                                                           warmup_steps=2, max_steps=10))
                                       for s in (5, 10)]
    for _, path in ckpt.list_checkpoints(out / "checkpoints"):
        assert ckpt.read_state(path)["fingerprint"]["config"]["train"]["lr"] == 3e-3
    man = read_json(out / "manifest.json")
    assert man["config"]["train"]["lr"] == 3e-3 and man["metrics"]["steps"] == 10
    assert man["selected"]["checkpoint"] == "checkpoints/step-10"
    assert man["train_config_digest"] == file_digest(out / "train_config.yaml")
    assert read_json(out / "selected.json")["step"] == 10

    # the retrained model makes stages 06 and 07 stale; 06 reruns on it (5 items of one task,
    # no reference model, to keep the test short): the same items' log-likelihoods differ
    cfg = load(ROOT / "params" / "smoke.yaml", {"run.output_root": str(rerun.run_dir.parent), **over})
    for n in ("06", "07"):
        assert "inputs.05_train" in STAGES[n].stale_reasons(cfg), n
    samples = rerun.run_dir / "06_evaluate" / "samples" / "arc_easy.jsonl"
    old = list(read_jsonl(samples))
    eval_over = {**over, "evaluate.tasks": "[arc_easy]", "evaluate.reference_models": "[]",
                 "evaluate.limit": "5"}
    res = rerun(["06"], eval_over)
    assert [s.status for s in res.statuses if s.stage == "06"] == ["done"]
    new = list(read_jsonl(samples))
    assert [r["prompt"] for r in new] == [r["prompt"] for r in old[:5]]
    assert all(a["loglikelihoods"] != b["loglikelihoods"] for a, b in zip(new, old))
    cfg06 = load(ROOT / "params" / "smoke.yaml", {"run.output_root": str(rerun.run_dir.parent),
                                                  **eval_over})
    assert STAGES["06"].stale_reasons(cfg06) == []
