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
