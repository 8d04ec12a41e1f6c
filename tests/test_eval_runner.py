"""Stages 06 and 07 through the runner (papermill included) on a copy of the smoke run
(issue 12): stage 05 retrained with another `train.max_steps` gives a new checkpoint; 06 and
07 then recompute what was the checkpoint's (06 killed with SIGKILL after its first new task
and resumed, without mixing old and new records) and reuse what was the reference model's;
every record carries the new model identity and no stale one remains. An operational knob of
each stage (`evaluate.batch_size`, `toxicity.batch_size`) then reruns nothing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi_lib.config import load
from phi_lib.hf_models import model_identity, model_slug
from phi_lib.safety.judge import item_key
from phi_lib.safety.stage import ToxicityStage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STEPS = {"train.max_steps": 10}  # the retrained run: fewer steps than the smoke's 40


def _mtimes(folder: Path, skip=("manifest.json", "stage.json")) -> dict[str, int]:
    """Modification times of the records under `folder` (results, tasks, samples, ...)."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".json", ".jsonl")
            and p.name not in skip and ".steps" not in p.parts}


def _lines(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(x) for f in sorted(folder.glob(pattern)) for x in f.read_text().splitlines()]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (the papermill kernel among them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_retrained_checkpoint_through_the_runner(smoke_copy):
    run_dir = smoke_copy.run_dir
    ev, tox = run_dir / "06_evaluate", run_dir / "07_toxicity"
    cfg = load(ROOT / "params" / "smoke.yaml", {"run.output_root": str(run_dir.parent), **STEPS})
    refs = [ev / "reference", tox / "toxigen" / "smollm2", tox / "completions" / "smollm2"]
    ref_times = {str(f): _mtimes(f, skip=("results.json",)) for f in refs}
    old_id = model_identity("checkpoint", run_dir)

    smoke_copy(["05"], STEPS, force=True)  # its old checkpoints are another run's: --force
    new_id = model_identity("checkpoint", run_dir)
    assert new_id != old_id

    # stage 06 killed with SIGKILL once its first task of the new checkpoint is written
    first = cfg.evaluate.tasks[0]
    cmd = [sys.executable, "-m", "phi_lib", "run", str(ROOT / "params" / "smoke.yaml"), "-q",
           "--stages", "06", "--set", f"run.output_root={run_dir.parent}",
           "--set", f"train.max_steps={STEPS['train.max_steps']}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    done, deadline = ev / "tasks" / f"{first}.json", time.time() + 600
    try:
        while True:
            assert proc.poll() is None and time.time() < deadline, "stage 06 ended before its first task"
            try:
                if json.loads(done.read_text())["fingerprint"]["inputs"]["model"] == new_id:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.05)
    finally:
        _kill_tree(proc.pid)
        proc.wait()
    assert not (ev / "stage.json").exists()
    killed = json.loads((ev / "results.json").read_text())  # still the old run's
    assert killed["model_identity"] == old_id

    res = smoke_copy(["06", "07"], STEPS)
    assert {s.stage: s.status for s in res.statuses if s.stage in ("06", "07")} == \
        {"06": "done", "07": "done"}

    # 06: the checkpoint's tasks carry the new identity; the killed run's first task was kept
    main = json.loads((ev / "results.json").read_text())
    assert main["model_identity"] == new_id and first in main["reused"]
    assert sorted(main["computed"] + main["reused"]) == sorted(cfg.evaluate.tasks)
    for task in cfg.evaluate.tasks:
        fp = main["fingerprints"][task]
        assert fp["inputs"]["model"] == new_id and fp["config"]["evaluate"]["limit"] == 10
        assert json.loads((ev / "tasks" / f"{task}.json").read_text())["fingerprint"] == fp
        samples = _lines(ev / "samples", f"{task}.jsonl")
        assert len(samples) == 10 and {s["fingerprint"] for s in samples} == {fp["key"]}
    ref = json.loads((ev / "reference" / "smollm2" / "results.json").read_text())
    assert ref["computed"] == [] and sorted(ref["reused"]) == sorted(cfg.evaluate.tasks)
    man = json.loads((ev / "manifest.json").read_text())
    assert man["models"]["checkpoint"] == new_id
    assert man["counts"]["tasks_reused"] == len(cfg.evaluate.tasks) + len(main["reused"])

    # 07: the checkpoint's groups and completions are redone, the reference's untouched
    stage = ToxicityStage(cfg, tox)
    for g in stage.groups:
        recs = _lines(tox / "toxigen" / "checkpoint", f"{g}.jsonl")
        assert recs and {r["fingerprint"] for r in recs} == {stage.group_fingerprint("checkpoint", g).key}
    for m in cfg.toxicity.models:
        recs = _lines(tox / "completions" / model_slug(m), "completions-*.jsonl")
        assert len(recs) == cfg.toxicity.probe_limit
        assert {r["fingerprint"] for r in recs} == {stage.completions_fingerprint(m).key}
    expected = {item_key(c): stage.grade_fingerprint(c).key for c in stage.completions()}
    assert {g["item"]: g["fingerprint"] for g in _lines(tox / "grades_judge", "grades-*.jsonl")} == expected
    results = json.loads((tox / "results.json").read_text())
    assert results["model_identities"]["checkpoint"] == new_id
    assert {str(f): _mtimes(f, skip=("results.json",)) for f in refs} == ref_times  # reused

    # operational knobs of both stages: skipped by the runner, nothing rewritten
    times = {**_mtimes(ev), **{f"07/{k}": v for k, v in _mtimes(tox).items()}}
    res = smoke_copy(["06", "07"], {**STEPS, "evaluate.batch_size": 4, "toxicity.batch_size": 4})
    assert {s.stage: s.status for s in res.statuses if s.stage in ("06", "07")} == \
        {"06": "skipped", "07": "skipped"}
    assert {**_mtimes(ev), **{f"07/{k}": v for k, v in _mtimes(tox).items()}} == times
