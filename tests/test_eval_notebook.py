"""Notebook 06 through the runner (papermill), and the `eval` CLI end to end, on a real
pretrained model (SmolLM2-135M; the tiny stage-05 checkpoint when stage 05 is built)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.notebooks
def test_evaluate_notebook_in_the_smoke_run(smoke_run):
    """Stage 06 of the smoke run: the stage-05 checkpoint and the smollm2 reference, scored."""
    cfg = smoke_run.cfg
    assert [s.status for s in smoke_run.statuses if s.stage == "06"] in (["done"], ["skipped"])
    out = cfg.run_dir / "06_evaluate"
    man = json.loads((out / "manifest.json").read_text())
    mc = [t for t in cfg.evaluate.tasks if t != "humaneval"]
    assert {f"{t}/acc" for t in mc} | {f"{mc[0]}/acc_norm"} <= set(man["metrics"])
    assert man["counts"][f"{mc[0]}/n"] == cfg.evaluate.limit and "benchmarks.png" in man["figures"]
    assert (out / "benchmarks.png").stat().st_size > 5000 and (out / "executed.ipynb").is_file()
    results = json.loads((out / "results.json").read_text())
    task = results["results"][mc[0]]
    assert task["n"] == cfg.evaluate.limit and 0 <= task["acc"] <= 1 and "acc_stderr" in task
    for ref in cfg.evaluate.reference_models:  # the reference gets the same tasks, own folder
        ref_results = json.loads((out / "reference" / ref / "results.json").read_text())
        assert set(ref_results["results"]) == set(results["results"])
    if "humaneval" in cfg.evaluate.tasks:
        humaneval = [json.loads(x) for x in (out / "samples" / "humaneval.jsonl").read_text().splitlines()]
        assert len(humaneval) == cfg.evaluate.limit
        assert all(s["statuses"][0] in ("passed", "failed", "timeout", "error") for s in humaneval)
        assert man["sandbox"]["level"] == cfg.evaluate.sandbox_isolation and man["sandbox"]["ok"]


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
    from phi_lib.hf_models import model_identity, smollm2_gguf
    from phi_lib.provenance import file_digest

    # the CLI's results carry the stage's fingerprints: the GGUF file's content identity
    assert res["model_identity"] == model_identity("smollm2") == file_digest(smollm2_gguf())
    fp = res["fingerprints"]["arc_challenge"]
    assert fp["inputs"]["model"] == res["model_identity"] and fp["config"]["evaluate"]["limit"] == 3
    assert {s["fingerprint"] for s in (json.loads(x) for x in (out / "samples" / "arc_challenge.jsonl")
                                       .read_text().splitlines())} == {fp["key"]}
    samples = [json.loads(x) for x in (out / "samples" / "arc_challenge.jsonl").read_text().splitlines()]
    assert [len(s["loglikelihoods"]) for s in samples] == [len(s["choices"]) for s in samples]
    # a rerun reuses the finished task (resume), and a bad task name is a clear error
    done = out / "tasks" / "arc_challenge.json"
    before = done.stat().st_mtime_ns
    p = subprocess.run(cmd[:7] + ["arc_challenge"] + cmd[8:], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and done.stat().st_mtime_ns == before
    p = subprocess.run(cmd[:7] + ["arc_hard"] + cmd[8:], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "evaluate.tasks.0" in p.stderr and "arc_hard" in p.stderr
