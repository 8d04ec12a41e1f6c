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
