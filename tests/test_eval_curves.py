"""Learning curves: Spearman against scipy, monotonicity and signal-to-noise on constructed
curves (a rising task gives signal, a noisy flat one does not), and the curve of a real run's
checkpoints evaluated in series (resumable, one folder per checkpoint)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from phi_lib.evaluate.curves import (curve_checkpoints, monotonicity, signal_table,
                                     signal_to_noise, spearman)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_spearman_is_scipys():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 12).astype(float)  # ties on both sides
        y = rng.integers(0, 4, 12).astype(float)
        ref = spearmanr(x, y).statistic
        assert spearman(x, y) == pytest.approx(ref, abs=1e-12) if not np.isnan(ref) else \
            np.isnan(spearman(x, y))
    assert np.isnan(spearman([1, 2, 3], [5, 5, 5]))


@pytest.mark.unit
def test_rising_task_gives_signal_and_flat_noisy_one_does_not():
    rng = np.random.default_rng(1)
    steps = [100, 200, 300, 400, 500, 600]
    rising = 0.3 + 0.04 * np.arange(6) + rng.normal(0, 0.005, (8, 6))   # (seeds, checkpoints)
    flat = 0.25 + rng.normal(0, 0.02, (8, 6))
    assert monotonicity(steps, rising) == pytest.approx(1.0)
    assert abs(monotonicity(steps, flat)) < 0.5
    assert signal_to_noise(rising) > 10 and signal_to_noise(flat) < 2
    assert np.isnan(signal_to_noise(rising[:1]))  # one seed: noise unmeasured
    curves = [{"tasks": {"rising": {"metric": "acc_norm", "steps": steps, "scores": list(r)},
                         "flat": {"metric": "acc", "steps": steps, "scores": list(f)}}}
              for r, f in zip(rising, flat)]
    rows = {r["task"]: r for r in signal_table(curves)}
    assert rows["rising"]["signal"] and not rows["flat"]["signal"]
    assert rows["rising"]["seeds"] == 8 and rows["rising"]["checkpoints"] == 6
    assert rows["rising"]["last"] > rows["rising"]["first"]


@pytest.mark.unit
def test_curve_checkpoints_are_the_multiples(tmp_path):
    for step in (10, 20, 25, 40):
        (tmp_path / f"step-{step}").mkdir()
        (tmp_path / f"step-{step}" / "config.json").write_text("{}")
    (tmp_path / "step-30").mkdir()  # unfinished: no config.json
    assert [s for s, _ in curve_checkpoints(tmp_path, 20)] == [20, 40]
    assert [s for s, _ in curve_checkpoints(tmp_path, 10)] == [10, 20, 40]


@pytest.fixture
def trained_run(request, tmp_path):
    """A run folder whose 05_train links a finished smoke run's (checkpoints step-20, step-40)."""
    root = os.environ.get("PHI_TEST_OUTPUTS")
    src = Path(root) / "smoke" / "05_train" if root else None
    if src is None or not (src / "checkpoints").is_dir():
        src = request.getfixturevalue("smoke_run").cfg.run_dir / "05_train"
    run_dir = tmp_path / "out" / "curve"
    run_dir.mkdir(parents=True)
    (run_dir / "05_train").symlink_to(src, target_is_directory=True)
    return run_dir


@pytest.mark.slow
def test_checkpoints_are_evaluated_in_series(trained_run):
    from phi_lib.config import load
    from phi_lib.evaluate.curves import evaluate_curve

    cfg = load(ROOT / "params" / "smoke.yaml", {
        "run.output_root": str(trained_run.parent), "run.name": trained_run.name,
        "evaluate.curve_every": 20, "evaluate.curve_tasks": ["piqa", "commonsense_qa_cloze"],
        "evaluate.curve_limit": 4})
    out = trained_run / "06_evaluate"
    curve = evaluate_curve(cfg, out)
    steps = [s for s, _ in curve_checkpoints(trained_run / "05_train" / "checkpoints", 20)]
    assert curve["steps"] == steps and len(steps) >= 2
    assert set(curve["tasks"]) == {"piqa", "commonsense_qa_cloze"}
    assert curve["tasks"]["piqa"]["metric"] == "acc_norm"
    for s in steps:  # each point a stage-06 results folder with its per-item samples
        res = json.loads((out / "curve" / f"step-{s}" / "results.json").read_text())
        assert res["n"] == {"piqa": 4, "commonsense_qa_cloze": 4}
        assert res["results"]["piqa"]["acc_norm"] == curve["tasks"]["piqa"]["scores"][steps.index(s)]
    # the checkpoints differ, so do their fingerprints; a rerun reuses every point
    ids = {json.loads((out / "curve" / f"step-{s}" / "results.json").read_text())["model_identity"]
           for s in steps}
    assert len(ids) == len(steps)
    evaluate_curve(cfg, out)
    assert all(json.loads((out / "curve" / f"step-{s}" / "results.json").read_text())["computed"]
               == [] for s in steps)


@pytest.mark.unit
def test_sweep_reports_curves_and_seed_errors(tmp_path):
    """write_comparison on constructed seed runs: mean ± s.e. (n=2) per variant, the curve
    table naming the task with signal, curves.png."""
    from phi_lib.sweep import write_comparison

    rng = np.random.default_rng(2)
    steps = [10, 20, 30, 40]
    rows, runs = {}, {}
    for v, slope in (("textbooks", 0.05), ("web", 0.03)):
        for seed in (0, 1):
            d = tmp_path / f"{v}-s{seed}"
            curve = {"tasks": {
                "arc_easy": {"metric": "acc_norm", "steps": steps,
                             "scores": list(0.3 + slope * np.arange(4) + rng.normal(0, 0.003, 4))},
                "mmlu_cloze": {"metric": "acc_norm", "steps": steps,
                               "scores": list(0.25 + rng.normal(0, 0.02, 4))}}}
            (d / "06_evaluate" / "curve").mkdir(parents=True)
            (d / "06_evaluate" / "curve" / "curve.json").write_text(json.dumps(curve))
            rows[d.name] = {"variant": v, "seed": seed, "05_train/final_val_loss": 3.0 + seed
                            + (v == "web")}
            runs.setdefault(v, []).append(d)
    table = write_comparison(rows, tmp_path / "cmp", ["05_train/final_val_loss"], runs=runs)
    md = (table.parent / "results.md").read_text()
    assert "| 05_train/final_val_loss | 3.5 ± 0.5 (n=2) | 4.5 ± 0.5 (n=2) |" in md
    assert "## Learning curves" in md and "Tasks with signal: arc_easy." in md
    assert (table.parent / "curves.png").is_file() and (table.parent / "results.png").is_file()
    assert table.read_text().splitlines()[0] == "run,variant,seed,05_train/final_val_loss"
