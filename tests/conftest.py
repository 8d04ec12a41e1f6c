"""Test setup: the data folder defaults to ../shared (as in CI), offline hub."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if not os.environ.get("PHI_DATA") and (ROOT.parent / "shared").is_dir():
    os.environ["PHI_DATA"] = str(ROOT.parent / "shared")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke pipeline (params/smoke.yaml), run once per test session.

    Stage tests assert on its outputs instead of re-running stages. Set PHI_TEST_OUTPUTS to a
    folder to keep the run between sessions (the runner then skips up-to-date stages).
    """
    from phi_lib.run import run

    root = os.environ.get("PHI_TEST_OUTPUTS") or str(tmp_path_factory.mktemp("outputs"))
    return run(ROOT / "params" / "smoke.yaml", overrides={"run.output_root": root})


@pytest.fixture
def smoke_copy(smoke_run, tmp_path):
    """A private copy of the session's finished smoke run, for tests that change a knob and
    rerun stages through the runner in the same run folder (provenance tests).

    Returns a function `rerun(stages, overrides=None, force=False) -> RunResult` running
    params/smoke.yaml on the copy (quiet), and the copy's run folder as `rerun.run_dir`."""
    import shutil

    from phi_lib.run import run

    root = tmp_path / "outputs"
    src = smoke_run.cfg.run_dir
    shutil.copytree(src, root / src.name, symlinks=True)

    def rerun(stages, overrides=None, force=False, log=lambda s: None):
        over = {"run.output_root": str(root), **(overrides or {})}
        return run(ROOT / "params" / "smoke.yaml", stages=list(stages), overrides=over,
                   force=force, log=log, report=False, stream_outputs=False)

    rerun.run_dir = root / src.name
    return rerun
