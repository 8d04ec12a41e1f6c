"""The papermill runner and sweeps, on small stand-in notebooks (plumbing only: the real
stage notebooks are exercised by tests/test_smoke_pipeline.py)."""
import json

import nbformat
import pytest

from phi_lib import stages as stages_mod
from phi_lib.config import load
from phi_lib.run import StageFailed, run
from phi_lib.sweep import sweep

pytestmark = pytest.mark.slow

PARAMS_CELL = 'params = ""\noverrides = {}\nrun_dir = ""'


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS_CELL)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("stand-in stage"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _ok(stage):
    return (f"import phi_lib.notebook, phi_lib.io\n"
            f"cfg, out = phi_lib.notebook.setup(params, overrides, run_dir, stage='{stage}')\n"
            f"(out / 'work.txt').write_text('done')\n"
            f"phi_lib.io.write_manifest(out, cfg, '{stage}', metrics={{'steps': cfg.train.max_steps}})")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setattr(stages_mod, "project_root", lambda: tmp_path)
    _notebook(tmp_path / "notebooks" / "01_synthesize.ipynb", _ok("01"))
    _notebook(tmp_path / "notebooks" / "05_train.ipynb", _ok("05"))
    _notebook(tmp_path / "notebooks" / "02_filter_web.ipynb",
              "import phi_lib\nraise ValueError('boom in stage 02')")
    params = tmp_path / "p.yaml"
    params.write_text(f"run: {{name: t, output_root: {tmp_path / 'out'}}}\ntrain: {{max_steps: 10}}\n")
    return tmp_path, params


def test_runs_skips_and_reports(project):
    root, params = project
    logs = []
    res = run(params, stages=["01", "03", "05"], log=logs.append)
    status = {s.stage: s.status for s in res.statuses}
    assert status == {"01": "done", "02": "not selected", "03": "not built", "04": "not selected",
                      "05": "done", "06": "not selected", "07": "not selected",
                      "08": "not selected"}
    run_dir = root / "out" / "t"
    assert (run_dir / "01_synthesize" / "executed.ipynb").is_file()
    assert json.loads((run_dir / "05_train" / "manifest.json").read_text())["metrics"] == {"steps": 10}
    report = (run_dir / "report.md").read_text()
    assert "| 03_mix | not built yet |" in report and "| steps | 10 |" in report
    assert (run_dir / "report.html").is_file()

    # same config: both skipped, and the log says so
    logs.clear()
    res = run(params, stages=["01", "05"], log=logs.append)
    assert [s.status for s in res.statuses if s.stage in ("01", "05")] == ["skipped", "skipped"]
    assert any("up to date" in line for line in logs)

    # a train change reruns 05 only; --force reruns everything selected
    res = run(params, stages=["01", "05"], overrides={"train.max_steps": "12"}, log=logs.append)
    assert {s.stage: s.status for s in res.statuses if s.stage in ("01", "05")} == {
        "01": "skipped", "05": "done"}
    res = run(params, stages=["01"], force=True, log=logs.append)
    assert res.statuses[0].status == "done"


def test_failing_stage_stops_with_cell_error_and_notebook_path(project):
    root, params = project
    with pytest.raises(StageFailed) as e:
        run(params, stages=["02", "05"], log=lambda s: None)
    msg = str(e.value)
    assert "ValueError: boom in stage 02" in msg
    assert str(root / "out" / "t" / "02_filter_web" / "executed.ipynb") in msg
    assert not (root / "out" / "t" / "05_train" / "stage.json").exists()  # the run stopped
    assert "| 02_filter_web | failed |" in (root / "out" / "t" / "report.md").read_text()


def test_sweep_compares_variants(project, tmp_path):
    root, params = project
    spec = root / "steps.yaml"
    spec.write_text("base: p.yaml\nstages: ['05']\nmetrics: [05_train/steps]\n"
                    "variants:\n  short: {train.max_steps: 3}\n  long: {train.max_steps: 30}\n")
    table = sweep(spec, log=lambda s: None)
    text = table.read_text().splitlines()
    assert text[0] == "variant,05_train/steps"
    assert sorted(text[1:]) == ["long,30", "short,3"]
    assert (table.parent / "results.png").is_file() and (table.parent / "results.md").is_file()
    assert (root / "out" / "steps-short" / "05_train" / "manifest.json").is_file()


def test_sweep_rejects_a_bad_variant_before_running(project):
    root, _ = project
    spec = root / "bad.yaml"
    spec.write_text("base: p.yaml\nvariants:\n  a: {train.max_stepz: 3}\n")
    from phi_lib.config import ConfigError

    with pytest.raises(ConfigError, match=r"variants\.a: train\.max_stepz: unknown key"):
        sweep(spec, log=lambda s: None)
    assert not (root / "out").exists()


def test_sweep_variants_share_stages_whose_config_is_unchanged(project):
    """A train-only ablation runs stage 01 once: the second variant links to the first's."""
    root, params = project
    spec = root / "share.yaml"
    spec.write_text("base: p.yaml\nstages: ['01', '05']\nmetrics: [05_train/steps]\n"
                    "variants:\n  a: {train.max_steps: 3}\n  b: {train.max_steps: 5}\n")
    logs = []
    table = sweep(spec, log=logs.append)
    # (the stand-in stage 01 records train.max_steps too: b shows a's, as it reused a's run)
    assert table.read_text().splitlines() == ["variant,01_synthesize/steps,05_train/steps",
                                              "a,3,3", "b,3,5"]
    a, b = root / "out" / "share-a", root / "out" / "share-b"
    assert (b / "01_synthesize").is_symlink()
    assert (b / "01_synthesize").resolve() == (a / "01_synthesize").resolve()
    assert not (b / "05_train").is_symlink()  # its config differs: it ran
    assert any("01_synthesize] same config as share-a" in line for line in logs)
    md = (table.parent / "results.md").read_text()  # what the ablation changed comes first
    assert md.index("05_train/steps") < md.index("## The same in every variant") < md.index(
        "01_synthesize/steps")
    assert "| 01_synthesize | skipped |" in (b / "report.md").read_text()
    # --force reruns every stage of every variant in its own folder
    sweep(spec, force=True, log=lambda s: None)
    assert not (b / "01_synthesize").is_symlink() and (b / "01_synthesize" / "work.txt").is_file()


def test_quiet_run_prints_stage_lines_only(project, caplog):
    import logging

    root, params = project
    logs = []
    with caplog.at_level(logging.INFO):
        res = run(params, stages=["01"], force=True, log=logs.append, stream_outputs=False)
    assert res.statuses[0].status == "done" and any("done in" in line for line in logs)
    assert not [r for r in caplog.records if r.name.startswith("papermill")]
    # the executed notebook keeps every output all the same
    nb = nbformat.read(root / "out" / "t" / "01_synthesize" / "executed.ipynb", as_version=4)
    assert any("stage 01_synthesize" in str(c.get("outputs")) for c in nb.cells)


# ----------------------------------------------------------------------------- provenance
def _writes(stage, extra=""):
    """A stand-in stage that writes a named output with fresh content each run (a retrained
    checkpoint is never byte-identical) and records the topic file it read as an input."""
    return (f"import time, pathlib, phi_lib.notebook, phi_lib.io\n"
            f"cfg, out = phi_lib.notebook.setup(params, overrides, run_dir, stage='{stage}')\n"
            f"ck = out / 'checkpoints' / 'step-1'\nck.mkdir(parents=True, exist_ok=True)\n"
            f"(ck / 'config.json').write_text(str(time.time_ns()))\n"
            f"(out / 'results.json').write_text(str(time.time_ns()))\n{extra}"
            f"phi_lib.io.write_manifest(out, cfg, '{stage}', metrics={{'steps': cfg.train.max_steps}},"
            f" inputs={{'topics': cfg.synth.topics}} if pathlib.Path(cfg.synth.topics).is_file() else {{}})")


@pytest.fixture
def chain(project):
    root, params = project
    _notebook(root / "notebooks" / "05_train.ipynb", _writes("05"))
    _notebook(root / "notebooks" / "06_evaluate.ipynb", _writes("06"))
    topics = root / "topics.txt"
    topics.write_text("optics\n")
    _notebook(root / "notebooks" / "01_synthesize.ipynb", _writes("01"))
    params.write_text(params.read_text() + f"synth: {{topics: {topics}}}\n")
    return root, params, topics


def test_a_stale_upstream_that_is_not_run_stops_before_work(chain):
    from phi_lib.config import ConfigError

    root, params, _ = chain
    run(params, stages=["05", "06"], log=lambda s: None)
    marker = root / "out" / "t" / "06_evaluate" / "stage.json"
    before = marker.read_text()
    with pytest.raises(ConfigError, match=r"stage 06_evaluate reads 05_train, which is not current "
                                          r"\(train\.max_steps\): run it too \(--stages 05,06\)"):
        run(params, stages=["06"], overrides={"train.max_steps": "11"}, log=lambda s: None)
    assert marker.read_text() == before  # nothing ran


def test_a_retrained_upstream_makes_downstream_stale_even_with_the_same_config(chain):
    root, params, _ = chain
    run(params, stages=["05", "06"], log=lambda s: None)
    res = run(params, stages=["05", "06"], log=lambda s: None)
    assert [s.status for s in res.statuses if s.stage in ("05", "06")] == ["skipped", "skipped"]
    logs = []
    run(params, stages=["05"], force=True, log=logs.append)  # new checkpoint bytes, same config
    res = run(params, stages=["05", "06"], log=logs.append)
    assert {s.stage: s.status for s in res.statuses if s.stage in ("05", "06")} == {
        "05": "skipped", "06": "done"}
    assert any("[06_evaluate] running" in line and "inputs.05_train" in line for line in logs)


def test_a_changed_data_file_reruns_the_stage_that_read_it(chain):
    root, params, topics = chain
    run(params, stages=["01"], log=lambda s: None)
    assert run(params, stages=["01"], log=lambda s: None).statuses[0].status == "skipped"
    topics.write_text("optics\nacoustics\n")
    logs = []
    assert run(params, stages=["01"], log=logs.append).statuses[0].status == "done"
    assert any("data file topics" in line for line in logs)


def test_force_discards_outputs_but_keeps_request_caches(chain):
    root, params, _ = chain
    run(params, stages=["01"], log=lambda s: None)
    out = root / "out" / "t" / "01_synthesize"
    (out / "leftover.jsonl").write_text("{}\n")
    (out / ".cache").mkdir()
    (out / ".cache" / "requests.sqlite").write_text("kept")
    run(params, stages=["01"], force=True, log=lambda s: None)
    assert not (out / "leftover.jsonl").exists()
    assert (out / ".cache" / "requests.sqlite").read_text() == "kept"
    assert (out / "stage.json").is_file()


def test_a_shared_stage_that_goes_stale_runs_in_its_own_folder(chain):
    """Variant b links a's finished stage 01; when b's synth config later changes, stage 01
    must run into b's own folder, never through the link into a's."""
    root, params, _ = chain
    spec = root / "share.yaml"
    spec.write_text("base: p.yaml\nstages: ['01', '05']\n"
                    "variants:\n  a: {train.max_steps: 3}\n  b: {train.max_steps: 5}\n")
    sweep(spec, log=lambda s: None)
    a, b = root / "out" / "share-a" / "01_synthesize", root / "out" / "share-b" / "01_synthesize"
    assert b.is_symlink()
    a_before = (a / "stage.json").read_text(), (a / "checkpoints" / "step-1" / "config.json").read_text()
    res = run(params, stages=["01"], overrides={"run.name": "share-b", "train.max_steps": "5",
                                               "synth.min_chars": "7"}, log=lambda s: None)
    assert res.statuses[0].status == "done"
    assert not b.is_symlink() and (b / "stage.json").is_file()
    assert ((a / "stage.json").read_text(),
            (a / "checkpoints" / "step-1" / "config.json").read_text()) == a_before
