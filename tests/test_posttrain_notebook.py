"""Notebook 08 through the runner on the smoke params (the session `smoke_run`), and the
provenance rule on a private copy of it: a changed knob retrains only what it makes stale
(here the DPO pairs' share: SFT, the generated pairs and the base/SFT measurements stay), a
kill -9 mid-DPO resumes from the last checkpoint, an operational knob recomputes nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from phi_lib.io import read_json
from phi_lib.paths import project_root
from phi_lib.provenance import Fingerprint, model_identity


def _lines(folder):
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.notebooks
def test_posttrain_notebook_in_the_smoke_run(smoke_run):
    cfg = smoke_run.cfg
    pc = cfg.posttrain
    assert [s.status for s in smoke_run.statuses if s.stage == "08"] in (["done"], ["skipped"])
    out = cfg.run_dir / "08_posttrain"
    res = read_json(out / "results.json")
    assert res["template"] == "chatml" and set(res["models"]) == {"base", "sft", "dpo"}
    for label, m in res["models"].items():
        assert set(m["benchmarks"]) == set(pc.measure.tasks), label
        assert m["mt_bench"]["turns"] == 2 * pc.measure.mt_bench_limit
        assert m["mt_bench"]["graded"] + m["mt_bench"]["unparsed"] + m["mt_bench"]["errors"] == \
            m["mt_bench"]["turns"]
        assert m["probes"]["probes"] == pc.measure.probe_limit and 0 <= m["probes"]["toxigen_mean"] <= 1
    for phase in ("sft", "dpo"):  # HF checkpoints with the fingerprint they were made with
        assert (out / phase / "model" / "config.json").is_file()
        assert read_json(out / phase / "model" / "posttrain.json")["fingerprint"]["key"] == \
            read_json(out / phase / "fingerprint.json")["key"]
    sft = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == pc.sft_examples and {r["source"] for r in sft} == set(pc.sft_sources)
    man = read_json(out / "manifest.json")
    gen = {k: v for k, v in man["counts"].items() if k.startswith("generated/")}
    too_long = man["drops"].get("pairs/generated/too_long", 0)
    assert sum(gen.values()) + too_long == pc.preference.generate  # every prompt has a status
    assert man["counts"]["pairs"] == pc.preference.pairs + gen.get("generated/kept", 0)
    assert man["metrics"]["dpo/rewards/margins"] is not None
    assert {"sft/gsm8k/train.jsonl", "pairs/helpful/test.jsonl.gz"} <= set(man["inputs"])  # digests re-checked
    # stage 07 ran on each model in a run of its own, with the completions kept per item
    for label in res["models"]:
        assert (out / "measure" / label / "toxicity" / "07_toxicity" / "results.json").is_file()
        assert list((out / "measure" / label / "benchmarks" / "samples").glob("*.jsonl"))


@pytest.mark.slow
def test_a_changed_pair_share_retrains_dpo_only_and_resumes_after_kill_9(smoke_copy):
    out = smoke_copy.run_dir / "08_posttrain"
    sft_weights = (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    gen_before = _lines(out / "data" / "generated_pairs")
    kept_measure = {label: (out / "measure" / label / "benchmarks.json").stat().st_mtime_ns
                    for label in ("base", "sft")}
    old_dpo = read_json(out / "dpo" / "fingerprint.json")
    # the pairs change; stage 07 on the new DPO model is left out (it is the costliest part, and
    # the benchmarks already show the measurement follows the retrained model)
    over = {"posttrain.preference.pairs": "2", "posttrain.measure.probes": "false"}

    # the first run of the change is killed once DPO wrote its first checkpoint
    cmd = [sys.executable, "-m", "phi_lib", "run", str(project_root() / "params" / "smoke.yaml"),
           "--stages", "08", "-q", "--set", f"run.output_root={smoke_copy.run_dir.parent}"]
    for k, v in over.items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(project_root())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    ckpt = out / "dpo" / "run" / "checkpoint-2" / "trainer_state.json"

    def new_checkpoint():  # the copy still holds the old run's checkpoint-2 until 08 removes it
        fp = out / "dpo" / "fingerprint.json"
        return fp.is_file() and read_json(fp)["key"] != old_dpo["key"] and ckpt.is_file()

    while not new_checkpoint() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert new_checkpoint(), "DPO never checkpointed before the kill"
    assert read_json(out / "dpo" / "fingerprint.json")["key"] != old_dpo["key"]  # the new run's
    assert not (out / "dpo" / "model").exists()  # the stale model was removed, the new one not done

    res = smoke_copy(["08"], over)
    assert [s.status for s in res.statuses if s.stage == "08"] == ["done"]
    log = (out / "dpo" / "train.log").read_text()
    assert "resuming dpo from" in log and "checkpoint-2" in log
    new_fp = read_json(out / "dpo" / "fingerprint.json")
    assert read_json(out / "dpo" / "model" / "posttrain.json")["fingerprint"]["key"] == new_fp["key"]
    assert Fingerprint.from_dict(new_fp).changes(old_dpo) == ["inputs.data"]  # the pairs changed
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    assert sum(not p["id"].startswith("generated/") for p in pairs) == 2
    # only the stale part was recomputed
    assert (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == sft_weights
    assert _lines(out / "data" / "generated_pairs") == gen_before
    for label, mtime in kept_measure.items():
        assert (out / "measure" / label / "benchmarks.json").stat().st_mtime_ns == mtime, label
    dpo_bench = read_json(out / "measure" / "dpo" / "benchmarks.json")
    assert dpo_bench["fingerprint"]["inputs"]["model"] == model_identity(out / "dpo" / "model")


@pytest.mark.slow
def test_an_operational_knob_recomputes_nothing(smoke_copy):
    over = {"posttrain.sft.log_every": "3", "posttrain.gradient_checkpointing": "true",
            "posttrain.master_port": "29999", "posttrain.synthetic.batch_prompts": "3"}
    lines = []
    res = smoke_copy(["08"], over, log=lines.append)
    assert [s.status for s in res.statuses if s.stage == "08"] == ["skipped"], lines
