"""Notebook 05 through the runner (papermill, fresh kernel) on the tiny packed mix: it writes
the resolved config and DeepSpeed JSON, trains in a subprocess, plots, plans and writes the
manifest; the evaluation stage's loader finds its checkpoint."""
import json

import pytest

from phi_lib.paths import project_root
from test_train_fixtures import TINY_MODEL, tiny_mix  # noqa: F401 - fixture

pytestmark = pytest.mark.notebooks


def test_train_notebook_runs_and_writes_the_manifest(tiny_mix, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from phi_lib.hf_models import latest_checkpoint
    from phi_lib.run import run

    run_dir = tmp_path / "smoke"
    run_dir.mkdir()
    (run_dir / "03_mix").symlink_to(tiny_mix)
    overrides = {"run.output_root": str(tmp_path), **TINY_MODEL, "train.max_steps": "6",
                 "train.eval_every": "3", "train.save_every": "3", "train.log_every": "2",
                 "train.warmup_steps": "2"}
    res = run(project_root() / "params" / "smoke.yaml", stages=["05"], report=False,
              overrides=overrides, log=lambda *_: None)
    assert [s.status for s in res.statuses if s.stage == "05"] == ["done"]
    out = run_dir / "05_train"
    man = json.loads((out / "manifest.json").read_text())
    m = man["metrics"]
    for key in ("final_train_loss", "final_val_loss", "tokens_per_s", "mfu"):
        assert isinstance(m[key], float) and m[key] > 0, key
    assert m["final_train_loss"] < m["first_train_loss"]
    assert man["counts"]["checkpoints"] == 2 and m["steps"] == 6
    for f in man["figures"]:
        assert (out / f).stat().st_size > 5000, f
    assert json.loads((out / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    assert (out / "train_config.yaml").is_file() and (out / "train.log").is_file()
    executed = (out / "executed.ipynb").read_text()
    assert "saved " in executed and "step 6 | phase pretrain" in executed  # log streamed
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == "step-6"
    AutoModelForCausalLM.from_pretrained(ckpt)  # what stage 06 does with `checkpoint`
