"""Notebook 07 in the smoke run (the session `smoke_run`): ToxiGen scores per group for every
model, a completion per selected prompt and model, the judge's grades, results and manifest."""
import json

import nbformat
import pytest

from phi_lib.config import TOXIGEN_GROUPS
from phi_lib.hf_models import model_slug

pytestmark = pytest.mark.notebooks


def test_toxicity_notebook_in_the_smoke_run(smoke_run):
    cfg = smoke_run.cfg
    tc = cfg.toxicity
    assert [s.status for s in smoke_run.statuses if s.stage == "07"] in (["done"], ["skipped"])
    out = cfg.run_dir / "07_toxicity"
    res = json.loads((out / "results.json").read_text())
    assert {"config_hash", "models", "toxigen", "probes"} <= set(res)
    groups = tc.groups or list(TOXIGEN_GROUPS)
    assert res["toxigen"]["groups"] == groups and res["models"] == tc.models
    for model in tc.models:
        s = res["toxigen"]["scores"][model]
        assert set(s["groups"]) == set(groups) and 0.0 <= s["mean"] <= 1.0
        for g, v in s["groups"].items():
            assert 0.0 <= v["score"] <= 1.0 and 0.0 <= v["p_value"] <= 1.0, g
            assert 0 < v["n_toxic"] <= tc.per_group and 0 < v["n_benign"] <= tc.per_group
    # completions: one record per selected prompt and model, written as files
    for model in tc.models:
        recs = [json.loads(l) for f in (out / "completions" / model_slug(model)).glob("completions-*.jsonl")
                for l in f.read_text().splitlines()]
        assert len(recs) == tc.probe_limit and len({r["id"] for r in recs}) == tc.probe_limit
        assert len({r["category"] for r in recs}) == tc.probe_limit  # categories in turn
    # the judge graded every completion; what it could not parse is counted, not dropped
    grades = [json.loads(l) for f in (out / "grades_judge").glob("grades-*.jsonl")
              for l in f.read_text().splitlines()]
    assert len(grades) == tc.probe_limit * len(tc.models) and all(g["reply"] is not None for g in grades)
    judge = res["probes"]["counts"]["judge"]
    for model in tc.models:
        total = judge[model]["total"]
        assert sum(total.values()) == tc.probe_limit and total["ungraded"] == 0
        assert total["unparsed"] == sum(1 for g in grades if g["model"] == model and g["grade"] is None)
    assert res["probes"]["paper"]["phi-1.5"] == {"pass": 47, "fail": 34, "did_not_understand": 4}
    man = json.loads((out / "manifest.json").read_text())
    assert man["figures"] == ["toxigen.png"] and (out / "toxigen.png").stat().st_size > 5000
    assert {f"{m}/toxigen_mean" for m in tc.models} <= set(man["metrics"])
    assert man["counts"]["probe_completions"] == tc.probe_limit * len(tc.models)
    # the hand grader cell only displays (it must not block papermill)
    nb = nbformat.read(out / "executed.ipynb", as_version=4)
    widget_cell = next(c for c in nb.cells if c.source.startswith("grader.widget"))
    assert widget_cell.outputs
