"""Notebook 06 through the runner (papermill), and the `eval` CLI end to end, on a real
pretrained model (SmolLM2-135M; the tiny stage-05 checkpoint when stage 05 is built)."""
import json
import subprocess
import sys

import pytest

from phi_lib.paths import project_root
from phi_lib.stages import STAGES


@pytest.mark.notebooks
def test_evaluate_notebook_runs(tmp_path):
    from phi_lib.run import run

    model = "checkpoint" if STAGES["05"].built else "smollm2"
    stages = ["03", "04", "05", "06"] if model == "checkpoint" else ["06"]
    res = run(project_root() / "params" / "smoke.yaml", stages=stages, report=False, overrides={
        "run.output_root": str(tmp_path), "evaluate.model": model,
        "evaluate.reference_models": [], "evaluate.tasks": ["arc_easy", "winogrande", "humaneval"],
        "evaluate.limit": "3", "evaluate.max_new_tokens": "32"}, log=lambda *_: None)
    assert [s.status for s in res.statuses if s.stage == "06"] == ["done"]
    out = res.cfg.run_dir / "06_evaluate"
    man = json.loads((out / "manifest.json").read_text())
    assert {"arc_easy/acc", "arc_easy/acc_norm", "winogrande/acc", "humaneval/pass@1"} <= set(
        man["metrics"])
    assert man["counts"]["arc_easy/n"] == 3 and man["figures"] == ["benchmarks.png"]
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["arc_easy"]["n"] == 3 and "acc_stderr" in results["results"]["arc_easy"]
    assert (out / "benchmarks.png").is_file() and (out / "executed.ipynb").is_file()
    humaneval = [json.loads(x) for x in (out / "samples" / "humaneval.jsonl").read_text().splitlines()]
    assert len(humaneval) == 3 and all(s["statuses"][0] in ("passed", "failed", "timeout", "error")
                                       for s in humaneval)


@pytest.mark.slow
def test_eval_cli_writes_results_and_resumes(tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "phi_lib", "eval", "--model", "smollm2", "--tasks",
           "arc_challenge,squad", "--limit", "3", "--out", str(out)]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # SQuAD: fail fast, clearly
    import os

    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "arc_challenge" in p.stdout and "squad" in p.stdout and "skipped" in p.stdout
    res = json.loads((out / "results.json").read_text())
    m = res["results"]["arc_challenge"]
    assert m["n"] == 3 and {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(m)
    assert res["model"] == "smollm2" and res["config_hash"] and "squad" in res["skipped"]
    samples = [json.loads(x) for x in (out / "samples" / "arc_challenge.jsonl").read_text().splitlines()]
    assert [len(s["loglikelihoods"]) for s in samples] == [len(s["choices"]) for s in samples]
    # a rerun reuses the finished task (resume), and a bad task name is a clear error
    done = out / "tasks" / "arc_challenge.json"
    before = done.stat().st_mtime_ns
    p = subprocess.run(cmd[:6] + ["arc_challenge"] + cmd[7:], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and done.stat().st_mtime_ns == before
    p = subprocess.run(cmd[:6] + ["arc_hard"] + cmd[7:], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "evaluate.tasks.0" in p.stderr and "arc_hard" in p.stderr
