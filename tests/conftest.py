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
