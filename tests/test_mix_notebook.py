"""Notebook 03 through the runner (papermill), sources pointed at corpora of the data folder
so it runs without stages 01/02, with a finetune set; then the loader reads what it wrote."""
import json

import pytest

from phi_lib.paths import project_root

pytestmark = pytest.mark.notebooks


def test_mix_notebook_runs_on_corpora(tmp_path):
    from phi_lib.packed import PackedDataset
    from phi_lib.run import run

    res = run(project_root() / "params" / "smoke.yaml", stages=["03"], report=False, overrides={
        "run.output_root": str(tmp_path), "run.stages": ["03"],  # no stage-01/02 source here
        "mix.total_tokens": "60000", "mix.num_proc": "2",
        "mix.sources": {"web": {"path": "corpora/web/c4-en", "weight": 0.5},
                        "textbooks": {"path": "corpora/textbook/dolma-synthetic-topics", "weight": 0.5}},
        "mix.finetune.source": "textbooks", "mix.finetune.total_tokens": "6400"},
        log=lambda *_: None)
    assert [s.status for s in res.statuses if s.stage == "03"] == ["done"]
    out = res.cfg.run_dir / "03_mix"
    man = json.loads((out / "manifest.json").read_text())
    assert man["metrics"]["share/web"] == pytest.approx(0.5, abs=0.05)
    assert (out / "mixture.png").is_file() and (out / "executed.ipynb").is_file()
    assert set(man["timings"]) == {"tokenize", "plan", "pack"}  # every step recorded its stats
    assert {"web", "textbooks", "tokenizer"} <= set(man["inputs"])  # the corpora and tokenizer read
    ds = PackedDataset(out, "train")
    assert ds.seq_len == 128 and len(ds) == man["metrics"]["train_windows"] > 400
    assert len(PackedDataset(out, "val")) > 0
    # the finetune set: packed beside the mixture, shown in the notebook's pack table
    n = man["metrics"]["finetune_windows"]
    assert n == len(PackedDataset(out / "finetune", "train")) and 45 <= n <= 6400 // 128  # whole docs
    executed = (out / "executed.ipynb").read_text()
    assert "finetune/train" in executed and "finetune/val" in executed
