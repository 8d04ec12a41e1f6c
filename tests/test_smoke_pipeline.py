"""The main job: params/smoke.yaml end to end through papermill, every built stage."""
import json

import nbformat
import pytest

from phi_lib.stages import STAGES

pytestmark = pytest.mark.notebooks


def test_every_built_stage_runs_and_reports(smoke_run):
    run_dir = smoke_run.cfg.run_dir
    status = {s.stage: s.status for s in smoke_run.statuses}
    report = (run_dir / "report.md").read_text()
    for number, stage in STAGES.items():
        if not stage.built:
            assert status[number] == "not built"
            assert f"| {stage.dirname} | not built yet |" in report
            continue
        assert status[number] in ("done", "skipped"), (number, status[number])
        out = run_dir / stage.dirname
        nb = nbformat.read(out / "executed.ipynb", as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config_hash"] == stage.config_hash(smoke_run.cfg)
        assert json.loads((out / "stage.json").read_text())["config_hash"] == manifest["config_hash"]
        assert f"## {stage.dirname}" in report
    assert (run_dir / "report.html").is_file()


def _corrupt_counts(obj, path=""):
    """Every `*corrupt*` count anywhere in a manifest (nested), by dotted path."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if "corrupt" in k and isinstance(v, int) and not isinstance(v, bool):
                out[p] = v
            else:
                out.update(_corrupt_counts(v, p))
    return out


def test_no_corrupt_records_where_nothing_is_corrupt(smoke_run):
    """Our own stages' files are well-formed: the data stages count zero corrupt records
    (stage 03 once read 01's manifest.json and stage.json as data: 156 "corrupt" records)."""
    for number in ("01", "02", "03"):
        out = smoke_run.cfg.run_dir / STAGES[number].dirname
        counts = _corrupt_counts(json.loads((out / "manifest.json").read_text()))
        assert not {k: v for k, v in counts.items() if v}, (number, counts)


OPERATIONAL_FLIPS = {
    "synth.batch_prompts": "3", "synth.backend.max_concurrency": "2", "synth.shard_size": "7",
    "filter.score_batch_size": "7", "filter.embed_batch_size": "5",
    "filter.annotator.timeout_s": "33", "mix.num_proc": "1", "mix.batch_docs": "9",
    "model.sample_max_new_tokens": "5", "model.gpus": "2", "train.log_every": "3",
    "train.master_port": "29517", "train.tensorboard": "false", "evaluate.batch_size": "3",
    "evaluate.timeout_s": "4", "toxicity.batch_size": "3", "toxicity.judge.max_retries": "1",
    "posttrain.sft.log_every": "3", "posttrain.master_port": "29999"}


def test_operational_knobs_recompute_nothing_through_the_runner(smoke_copy):
    """Flip an operational knob of every stage at once: the runner runs no notebook."""
    res = smoke_copy(stages=list(STAGES), overrides=OPERATIONAL_FLIPS)
    assert {s.stage: s.status for s in res.statuses} == {n: "skipped" for n in STAGES}
