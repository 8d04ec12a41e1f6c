"""Stage 01 provenance through the runner (papermill, the real notebook, smollm2) on a private
copy of the smoke run (issue 12): a changed sampling knob, killed (kill -9) midway and
resumed, leaves only records of the new config, each once, and stage 03 is rebuilt from
them; a changed filter knob re-filters without generating; operational knobs rerun nothing.

Cheap by construction: the changed runs generate 2 short textbook samples (`synth.kinds`
limited by an override), one per backend call so that there is a moment to kill."""
import json
import subprocess
import sys
import time

import pytest

from phi_lib.config import SynthConfig, load
from phi_lib.io import iter_jsonl_files, read_json, read_jsonl
from phi_lib.provenance import operational_paths
from phi_lib.synth import generation_fingerprint

pytestmark = pytest.mark.slow

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
CHANGE = {"synth.sampling.temperature": 0.7}
CHEAP = {"synth.kinds": {"textbook": 2}, "synth.batch_prompts": 1}
IDS = ["textbook-0000000", "textbook-0000001"]


def records(folder):
    return [r for f in iter_jsonl_files(folder) for r in read_jsonl(f)] if folder.is_dir() else []


def raw_records(out):
    """Raw completions, the unsealed `.partial` shard a running or killed run holds included."""
    folder = out / ".generated"
    partial = [r for f in folder.rglob(".shard.partial") for r in read_jsonl(f)]
    return records(folder) + partial


def status(result, stage):
    return {s.stage: s.status for s in result.statuses}[stage]


def flipped(value):
    """Another valid value of an operational field."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return ["http://127.0.0.1:9/v1"]
    return {"auto": "cpu", "strict": "standard"}.get(value, f"{value}_X")


def test_operational_knobs_rerun_nothing(smoke_copy):
    cfg = load(ROOT / "params" / "smoke.yaml")
    over = {}
    for path in operational_paths(SynthConfig, "synth."):
        obj = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        over[path] = flipped(obj)
    assert {"synth.batch_prompts", "synth.shard_size", "synth.backend.timeout_s",
            "synth.backend.batch_size", "synth.backend.device", "synth.report_samples"} <= set(over)
    marker = smoke_copy.run_dir / "01_synthesize" / "stage.json"
    before = marker.read_bytes()
    res = smoke_copy(["01"], over)
    assert status(res, "01") == "skipped"
    assert marker.read_bytes() == before


def test_changed_sampling_killed_and_resumed_reruns_01_and_03(smoke_copy):
    run_dir = smoke_copy.run_dir
    out = run_dir / "01_synthesize"
    mix_before = read_json(run_dir / "03_mix" / "stage.json")["outputs_digest"]
    over = {**CHANGE, **CHEAP, "run.output_root": str(run_dir.parent)}
    new = generation_fingerprint(load(ROOT / "params" / "smoke.yaml", over)).key
    assert new != generation_fingerprint(load(ROOT / "params" / "smoke.yaml")).key
    # 1. the changed run, killed (the runner and its kernel) once its first record is written
    sets = [f"--set={k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in over.items()]
    proc = subprocess.Popen([sys.executable, "-m", "phi_lib", "run", "params/smoke.yaml",
                             "--stages", "01", "-q", *sets], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while (not [r for r in raw_records(out) if r.get("fingerprint") == new]
               and proc.poll() is None and time.time() < deadline):
            time.sleep(0.05)
    finally:
        _kill_tree(proc)
    mid = raw_records(out)  # the old raw completions were pruned before the first request
    assert proc.returncode == -9 and [r["fingerprint"] for r in mid] == [new], proc.returncode
    assert not (out / "stage.json").exists()  # a killed stage is not done
    for folder in ("textbook", "code_textbook", "code_exercises", ".dropped"):
        # the old samples went before anything new was asked (pruned, not mixed)
        assert all(r.get("fingerprint") == new for r in records(out / folder)), folder
    # 2. resume, and rebuild the mixture from the new samples
    res = smoke_copy(["01", "03"], over)
    assert status(res, "01") == "done" and status(res, "03") == "done"
    for folder in (".generated", "textbook", ".dropped", "code_textbook", "code_exercises"):
        recs = records(out / folder)
        assert all(r["fingerprint"] == new and r["sampling"]["temperature"] == 0.7
                   for r in recs), folder
    samples = [r["id"] for f in ("textbook", ".dropped") for r in records(out / f)]
    assert sorted(samples) == IDS  # each once; the other kinds' old samples are gone
    raw = records(out / ".generated")
    assert sorted(r["id"] for r in raw) == IDS and mid[0] in raw  # kept, not asked again
    gen = read_json(out / ".steps" / "generate.json")["counts"]
    assert gen["textbook/asked"] == 1 and gen["textbook/reused"] == 1
    manifest = read_json(out / "manifest.json")
    assert manifest["counts"]["textbook/generated"] == 2 and "pending" not in manifest
    mix = read_json(run_dir / "03_mix" / "stage.json")
    assert mix["outputs_digest"] != mix_before
    assert mix["fingerprint"]["inputs"]["01_synthesize"].startswith(
        read_json(out / "stage.json")["config_hash"])


def test_changed_filter_knob_refilters_without_generating(smoke_copy):
    out = smoke_copy.run_dir / "01_synthesize"
    generate_stats = (out / ".steps" / "generate.json").read_bytes()
    raw = {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")}
    assert raw  # the smoke run's raw completions
    old = {r["filter_fingerprint"] for k in ("textbook", ".dropped") for r in records(out / k)}
    res = smoke_copy(["01"], {"synth.min_chars": 10_000})
    assert status(res, "01") == "done"
    assert (out / ".steps" / "generate.json").read_bytes() == generate_stats  # not regenerated
    assert {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")} == raw
    dropped = records(out / ".dropped")
    assert len(dropped) == sum(load(ROOT / "params" / "smoke.yaml").synth.kinds.values())
    assert {r["drop_reason"] for r in dropped} == {"too_short"}
    assert not any(records(out / k) for k in ("textbook", "code_textbook", "code_exercises"))
    [key] = {r["filter_fingerprint"] for r in dropped}
    assert old and key not in old


def _kill_tree(proc):
    """SIGKILL a process and every descendant (the papermill kernel runs in its own session)."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in kids:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait(30)  # reaped by Popen, so its returncode says how it ended
    psutil.wait_procs(kids, timeout=30)
