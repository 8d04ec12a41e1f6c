"""Notebook 05 through the runner (papermill, fresh kernel) on the tiny packed mix: it writes
the resolved config and DeepSpeed JSON, trains in a subprocess, plots, plans and writes the
manifest (the stage writes it, with the selected checkpoint and the digest of the config file
the training process read); the evaluation stage's loader finds the selected checkpoint."""
import json

import pytest

from phi_lib.paths import project_root
from test_train_fixtures import TINY_MODEL, tiny_mix  # noqa: F401 - fixture

pytestmark = pytest.mark.notebooks


def test_train_notebook_runs_and_writes_the_manifest(tiny_mix, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from phi_lib.hf_models import resolve_model
    from phi_lib.provenance import file_digest
    from phi_lib.run import run

    run_dir = tmp_path / "smoke"
    run_dir.mkdir()
    (run_dir / "03_mix").symlink_to(tiny_mix)
    # only stage 05 in this run: its 03_mix is the fixture's (no stage-03 done marker)
    overrides = {"run.output_root": str(tmp_path), "run.stages": "05", **TINY_MODEL,
                 "train.max_steps": "6",
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
    assert man["figures"] == ["training.png", "planner.png"]
    for f in man["figures"]:
        assert (out / f).stat().st_size > 5000, f
    assert json.loads((out / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    assert (out / "train_config.yaml").is_file() and (out / "train.log").is_file()
    executed = (out / "executed.ipynb").read_text()
    assert "saved " in executed and "step 6 | phase pretrain" in executed  # log streamed
    assert man["selected"]["checkpoint"] == "checkpoints/step-6" and m["selected_step"] == 6
    assert man["train_config_digest"] == file_digest(out / "train_config.yaml")
    assert man["config"]["train"]["max_steps"] == 6
    ckpt = resolve_model("checkpoint", run_dir)  # what stages 06 and 07 load
    assert ckpt == str(out / "checkpoints" / "step-6")
    AutoModelForCausalLM.from_pretrained(ckpt)
