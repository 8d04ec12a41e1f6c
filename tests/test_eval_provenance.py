"""Stage 06 provenance (issue 12): every task result and per-item sample carries the
fingerprint of what produced it (the settings that task depends on, the model's content
identity, its benchmark files); a retrained checkpoint or a changed setting recomputes the
tasks it affects and only those, and leaves no stale record behind.

Library level, on random phi-tiny checkpoints (seconds); the same through the runner on the
smoke run is `test_eval_safety_runner.py`."""
import dataclasses
import json
import os

import pytest
import torch

from phi_lib.config import ConfigError, EvaluateConfig, load
from phi_lib.evaluate import evaluate_model
from phi_lib.evaluate.harness import SELECTION, task_fingerprint, task_settings
from phi_lib.provenance import is_operational

TASKS = ["arc_easy", "humaneval"]


def _checkpoint(folder, seed):
    """A random phi-tiny saved at `folder` (a run's `05_train/checkpoints/step-1` is what
    `checkpoint` names)."""
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.checkpoint import save_pretrained

    torch.manual_seed(seed)
    return save_pretrained(PhiForCausalLM(PhiConfig.from_preset("phi-tiny")).eval(), folder)


def _retrain_keeping_size_and_mtime(folder, seed):
    """Other weights in place of a checkpoint, every file's size and time kept (as `cp -p` or
    `rsync -a` of a checkpoint trained elsewhere gives): only a content identity sees it."""
    times = {f.name: f.stat() for f in folder.iterdir()}
    _checkpoint(folder, seed)
    for name, st in times.items():
        os.utime(folder / name, ns=(st.st_atime_ns, st.st_mtime_ns))


def _samples(folder, task):
    return [json.loads(x) for x in (folder / "samples" / f"{task}.jsonl").read_text().splitlines()]


def _mtimes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*")) if p.is_file() and p.parts[-2] in ("tasks", "samples")}


@pytest.mark.slow
def test_retrained_checkpoint_is_reevaluated(tmp_path):
    """The bug of issue 12: the per-task result held the model *name*, so a retrained
    `checkpoint` reused the old model's numbers (this failed before the fix)."""
    run_dir, out = tmp_path / "run", tmp_path / "eval"
    ckpt = _checkpoint(run_dir / "05_train" / "checkpoints" / "step-1", seed=0)
    cfg = EvaluateConfig(limit=2, device="cpu")
    first = evaluate_model("checkpoint", ["arc_easy"], out, cfg=cfg, run_dir=run_dir, progress=False)
    before = _samples(out, "arc_easy")
    _retrain_keeping_size_and_mtime(ckpt, seed=1)
    second = evaluate_model("checkpoint", ["arc_easy"], out, cfg=cfg, run_dir=run_dir, progress=False)
    after = _samples(out, "arc_easy")
    assert [s["loglikelihoods"] for s in after] != [s["loglikelihoods"] for s in before]
    assert second["computed"] == ["arc_easy"] and second["model_identity"] != first["model_identity"]
    fp = second["fingerprints"]["arc_easy"]
    assert fp["inputs"]["model"] == second["model_identity"]
    assert {s["fingerprint"] for s in after} == {fp["key"]}  # no sample of the old model left


@pytest.mark.slow
def test_stage_recomputes_only_the_stale_tasks(tmp_path):
    """EvalStage on a checkpoint and a reference: a retrained checkpoint reruns the
    checkpoint's tasks only; a generation setting reruns the generation task of both models
    only; an operational knob reruns nothing; a task taken off the list leaves no record."""
    from phi_lib.evaluate.stage import EvalStage

    ref = _checkpoint(tmp_path / "ref", seed=5)
    over = {"run.output_root": str(tmp_path), "run.name": "run", "evaluate.tasks": TASKS,
            "evaluate.limit": 2, "evaluate.max_new_tokens": 4, "evaluate.device": "cpu",
            "evaluate.reference_models": [str(ref)]}
    cfg = load("params/smoke.yaml", over)
    ckpt = _checkpoint(cfg.run_dir / "05_train" / "checkpoints" / "step-1", seed=0)
    stage = EvalStage(cfg)
    out, ref_out = stage.out, stage.folders()[str(ref)]
    assert {r["computed"] == TASKS for r in stage.evaluate(progress=False).values()} == {True}
    ref_times = _mtimes(ref_out)

    _retrain_keeping_size_and_mtime(ckpt, seed=1)
    done = EvalStage(cfg).evaluate(progress=False)
    assert done["checkpoint"]["computed"] == TASKS and done[str(ref)]["computed"] == []
    assert _mtimes(ref_out) == ref_times  # the reference's records were not touched
    res = json.loads((out / "results.json").read_text())
    from phi_lib.hf_models import model_identity

    assert res["model_identity"] == model_identity("checkpoint", cfg.run_dir)
    for task in TASKS:
        fp = res["fingerprints"][task]
        assert fp["inputs"]["model"] == res["model_identity"]
        assert {s["fingerprint"] for s in _samples(out, task)} == {fp["key"]}
        assert json.loads((out / "tasks" / f"{task}.json").read_text())["fingerprint"] == fp

    longer = load("params/smoke.yaml", {**over, "evaluate.max_new_tokens": 6})
    done = EvalStage(longer).evaluate(progress=False)
    assert {r["computed"] == ["humaneval"] for r in done.values()} == {True}

    times = {**_mtimes(out), **_mtimes(ref_out)}
    batch = load("params/smoke.yaml", {**over, "evaluate.max_new_tokens": 6, "evaluate.batch_size": 3,
                                       "evaluate.timeout_s": 3.0})
    stage = EvalStage(batch)
    assert {r["computed"] == [] for r in stage.evaluate(progress=False).values()} == {True}
    assert {**_mtimes(out), **_mtimes(ref_out)} == times
    assert stage.fingerprint.key == EvalStage(longer).fingerprint.key  # the runner skips too
    man = stage.write_manifest()
    assert man["counts"]["tasks_computed"] == 0 and man["counts"]["tasks_reused"] == 4
    assert man["models"]["checkpoint"] == res["model_identity"]
    assert {"arc_easy.items", "humaneval.items"} <= set(man["inputs"])

    fewer = load("params/smoke.yaml", {**over, "evaluate.max_new_tokens": 6,
                                       "evaluate.tasks": ["arc_easy"], "evaluate.reference_models": []})
    EvalStage(fewer).evaluate(progress=False)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["arc_easy.jsonl"]
    assert not (out / "tasks" / "humaneval.json").exists() and not ref_out.exists()


def test_task_fingerprints_cover_each_setting_where_it_matters():
    """Each result-affecting `evaluate` field changes the fingerprint of the tasks whose
    numbers depend on it, and of no other; operational fields change none; no field is left
    out (a new field must be placed)."""
    tasks = ["arc_easy", "mmlu", "humaneval", "squad", "gsm8k"]
    base = EvaluateConfig(temperature=0.5, n_samples=2, pass_k=[1, 2], dtype="float32")
    keys = {t: task_fingerprint(t, base, "model-a").key for t in tasks}
    flips = {"limit": 7, "dtype": "bfloat16", "mmlu_shots": 5, "gsm8k_mode": "cot",
             "n_samples": 3, "pass_k": [1], "temperature": 0.7, "max_new_tokens": 9,
             "batch_size": 3, "timeout_s": 2.0, "device": "cpu", "sandbox_isolation": "weak",
             "task_limits": {"mmlu": 3}}
    fields = {f.name: f for f in dataclasses.fields(EvaluateConfig)}
    assert set(flips) | set(SELECTION) == set(fields), "place every evaluate field"
    expected = {"limit": tasks, "dtype": tasks, "task_limits": ["mmlu"], "mmlu_shots": ["mmlu"], "gsm8k_mode": ["gsm8k"],
                "n_samples": ["humaneval", "gsm8k"], "pass_k": ["humaneval", "gsm8k"],
                "temperature": ["humaneval", "squad", "gsm8k"],
                "max_new_tokens": ["humaneval", "squad", "gsm8k"]}
    for name, value in flips.items():
        cfg = dataclasses.replace(base, **{name: value})
        changed = [t for t in tasks if task_fingerprint(t, cfg, "model-a").key != keys[t]]
        assert changed == (expected.get(name, []) if not is_operational(fields[name]) else []), name
    assert all(task_fingerprint(t, base, "model-b").key != keys[t] for t in tasks)
    # `auto` is recorded as loaded: float32 on a CPU (bfloat16 on a GPU)
    assert task_settings(EvaluateConfig(device="cpu"), "arc_easy")["dtype"] == "float32"
    # gsm8k via chain of thought writes no program: n_samples/pass_k do not apply
    cot = dataclasses.replace(base, gsm8k_mode="cot")
    assert "n_samples" not in task_settings(cot, "gsm8k") and "n_samples" in task_settings(base, "gsm8k")


def test_task_files_are_what_the_loaders_read(monkeypatch):
    """The files a task's fingerprint digests are exactly those its loader opens."""
    from phi_lib.evaluate import data
    from phi_lib.io import ReadStats
    from phi_lib.paths import MissingDataError

    for task in data.LOADERS:
        opened = []
        real = data.data_path
        monkeypatch.setattr(data, "data_path", lambda rel, c=None: opened.append(str(rel)) or real(rel, c))
        try:
            data.load_task(task, 1, ReadStats())
        except MissingDataError:
            pass
        monkeypatch.setattr(data, "data_path", real)
        declared = {f"benchmarks/{rel}" for rel in data.TASK_FILES[task].values()}
        assert set(opened) <= declared, task
        files = data.task_files(task)
        assert files and all(p is None or p.exists() for p in files.values()), task


def test_n_samples_at_temperature_zero_is_rejected():
    with pytest.raises(ConfigError, match=r"^evaluate\.n_samples: 5 samples .*temperature 0.*"
                                          r"evaluate\.temperature"):
        load("params/smoke.yaml", {"evaluate.n_samples": 5, "evaluate.pass_k": [1, 5]})
    cfg = load("params/smoke.yaml", {"evaluate.n_samples": 5, "evaluate.pass_k": [1, 5],
                                     "evaluate.temperature": 0.8})
    assert cfg.evaluate.n_samples == 5
