"""A sweep with two seeds on the smoke params, through the runner: stages 01-04 are linked from
the finished smoke run (their configs do not read `train.seed`), each (variant, seed) trains
and evaluates in its own folder, and results.md reports mean +/- standard error over the seeds
and the paired tests between the variants."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from phi_lib.config import load
from phi_lib.stages import STAGES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def smoke_base(request):
    """A smoke run whose stages 01-04 are current: PHI_TEST_OUTPUTS's when it has them
    (nothing reruns), else the session's smoke run."""
    root = os.environ.get("PHI_TEST_OUTPUTS")
    if root:
        cfg = load(ROOT / "params" / "smoke.yaml", {"run.output_root": root})
        if all(STAGES[n].is_complete(cfg) for n in ("01", "02", "03", "04")):
            return cfg.run_dir
    return request.getfixturevalue("smoke_run").cfg.run_dir


def test_two_seed_sweep_through_the_runner(smoke_base, tmp_path):
    from phi_lib.sweep import sweep

    out = tmp_path / "out"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "extends": str(ROOT / "params" / "smoke.yaml"),
        "run": {"output_root": str(out)},
        "train": {"max_steps": 2, "warmup_steps": 1, "save_every": 2, "eval_every": 2,
                  "eval_batches": 1},
        "evaluate": {"tasks": ["arc_easy", "piqa"], "limit": 6, "reference_models": []}}))
    spec = tmp_path / "seeds.yaml"
    spec.write_text(yaml.safe_dump({
        "base": "base.yaml", "stages": ["05", "06"], "seeds": [0, 1],
        "metrics": ["05_train/final_val_loss", "06_evaluate/piqa/acc_norm"],
        "variants": {"lr_low": {"train.lr": 1e-4}, "lr_high": {"train.lr": 3e-3}}}))
    logs = []
    table = sweep(spec, log=logs.append, share_from=[smoke_base], stream_outputs=False)

    runs = {f"seeds-{v}-s{s}": out / f"seeds-{v}-s{s}" for v in ("lr_low", "lr_high") for s in (0, 1)}
    for run_dir in runs.values():
        for n in ("01", "02", "03", "04"):  # shared with the smoke run, not rerun
            link = run_dir / STAGES[n].dirname
            assert link.is_symlink() and link.resolve() == (smoke_base / STAGES[n].dirname).resolve()
        for n in ("05", "06"):  # each seed its own training and evaluation
            assert not (run_dir / STAGES[n].dirname).is_symlink()
            assert (run_dir / STAGES[n].dirname / "stage.json").is_file()
    seeds = {name: json.loads((d / "05_train" / "manifest.json").read_text())["config"]["train"]["seed"]
             for name, d in runs.items()}
    assert seeds == {name: int(name[-1]) for name in runs}
    w = lambda name: (runs[name] / "05_train" / "checkpoints" / "step-2" / "model.safetensors").read_bytes()
    assert w("seeds-lr_low-s0") != w("seeds-lr_low-s1")  # the seed changed init and data order

    rows = table.read_text().splitlines()
    assert rows[0].startswith("run,variant,seed,") and len(rows) == 5
    md = (table.parent / "results.md").read_text()
    assert "mean ± standard error over seeds" in md and "(n=2)" in md and " ± " in md
    assert "## Paired tests between variants" in md
    pairs = [line for line in md.splitlines() if line.startswith("- ")]
    assert {p.split(":")[0] for p in pairs} >= {"- arc_easy/acc", "- piqa/acc_norm"}
    assert all(("within noise" in p) != ("is better" in p) and "seeds 2+2" in p for p in pairs)
    assert (table.parent / "results.png").is_file()
