"""params/sweeps/textbook_vs_web_gpu.yaml dry-runs here: six runs (3 variants x 2 seeds) at
equal tokens, stages shared exactly where their configs agree, and the size, token budget and
hour the file states are what the planner computes."""
from __future__ import annotations

from pathlib import Path

import pytest

from phi_lib.sweep import load_sweep, plan

pytestmark = pytest.mark.unit
SPEC = Path(__file__).resolve().parent.parent / "params" / "sweeps" / "textbook_vs_web_gpu.yaml"


def test_gpu_sweep_dry_run_shares_stages_where_configs_agree():
    runs = plan(SPEC)
    assert [(r["variant"], r["seed"]) for r in runs] == [
        (v, s) for v in ("textbooks", "filtered_web", "web_and_textbooks") for s in (0, 1)]
    first = runs[0]["run"]
    for r in runs[1:]:  # synthesis, filtering and the model config: made once
        assert {r["stages"][n]["shared_with"] for n in ("01", "02", "04")} == {first}
    for r in runs:
        assert r["stages"]["05"]["shared_with"] is None and r["stages"]["06"]["shared_with"] is None
        # a variant's second seed packs nothing new; another variant's mixture is its own
        assert r["stages"]["03"]["shared_with"] == (runs[runs.index(r) - 1]["run"]
                                                     if r["seed"] == 1 else None)
    assert "07" not in runs[0]["stages"]
    assert len({r["tokens"] for r in runs}) == 1 and len({r["train_steps"] for r in runs}) == 1


def test_gpu_sweep_size_and_budget_are_the_planners():
    from phi_lib.config import load
    from phi_lib.model import PhiConfig
    from phi_lib.model.planning import flops_per_token, param_count
    from phi_lib.sweep import _variant_overrides
    from phi_lib.train.mfu import GPU_PEAK_TFLOPS

    spec = load_sweep(SPEC)
    cfg = load(spec["base"], _variant_overrides(spec, "textbooks", 0))
    model = PhiConfig.from_model_config(cfg.model)
    assert param_count(model)["total"] == pytest.approx(163.7e6, rel=1e-3)  # as the file says
    fpt = flops_per_token(model, cfg.mix.seq_len)
    assert fpt == pytest.approx(9.73e8, rel=1e-3)
    tokens = cfg.train.max_steps * cfg.train.global_batch_size * cfg.mix.seq_len
    assert tokens == pytest.approx(cfg.mix.total_tokens, rel=1e-3) == pytest.approx(1e9, rel=1e-3)
    hours = tokens * fpt / (0.30 * GPU_PEAK_TFLOPS["H100"][0] * 1e12) / 3600
    assert 0.8 < hours < 1.0  # ~55 min at 30% MFU on one H100
    ev = cfg.evaluate
    assert ev.curve_every == cfg.train.save_every and cfg.train.keep_last * ev.curve_every > \
        cfg.train.max_steps  # every curve point's checkpoint is kept
    assert "mmlu_cloze" in ev.tasks and "commonsense_qa_cloze" in ev.tasks


def test_sweep_dry_run_from_the_command_line(capsys):
    from phi_lib.__main__ import main

    assert main(["sweep", str(SPEC), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    runs = plan(SPEC)
    assert len(lines) == len(runs) == 6
    assert lines[0].startswith(f"{runs[0]['run']}: variant textbooks, seed 0") and "shared" not in lines[0]
    assert f"01 shared with {runs[0]['run']}" in lines[1] and "runs 05 06" in lines[1]
