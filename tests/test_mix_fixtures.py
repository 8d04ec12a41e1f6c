"""Shared builders for the stage-03 tests: constructed corpora with known documents, and a
small packed mixture built once per session (no tests in this file)."""
import gzip
import json
import random
from pathlib import Path

import pytest

from phi_lib.config import load

WORDS = ("the cat sat on a mat while seven quick engineers wrote python code about prime "
         "numbers gravity photosynthesis and the history of rome in simple clear sentences").split()


def make_docs(n: int, seed: int, prefix: str) -> list[str]:
    """`n` distinct documents of 3..80 words (each starts with a unique tag)."""
    rng = random.Random(seed)
    return [f"{prefix}{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 80)))
            for i in range(n)]


def write_jsonl(path: Path, docs: list[str], field: str = "text", gz: bool = False,
                extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({field: d, "id": i}) for i, d in enumerate(docs)] + list(extra_lines)
    data = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def mix_config(tmp: Path, sources: dict, name: str = "t", tokenizer: str | None = None, **mix):
    """A config (run `name`, `model.tokenizer` or the default one) whose data folder and
    outputs live in `tmp`."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared"
    # the data folder holds the constructed corpora; the real tokenizer is linked in
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    if not (tmp / "data" / "tokenizers").exists():
        import os

        (tmp / "data" / "tokenizers").symlink_to(
            Path(os.environ.get("PHI_DATA", shared)) / "tokenizers")
    overrides = {"run.output_root": str(tmp / "outputs"), "run.data_dir": str(tmp / "data"),
                 "mix.sources": sources, "mix.num_proc": mix.pop("num_proc", 1)}
    overrides.update({f"mix.{k}": v for k, v in mix.items()})
    if tokenizer is not None:
        overrides["model.tokenizer"] = tokenizer
    return load({"run": {"name": name, "seed": 7}}, overrides)


def build(cfg, progress=False):
    from phi_lib.data import MixBuilder

    out = cfg.run_dir / "03_mix"
    out.mkdir(parents=True, exist_ok=True)
    b = MixBuilder(cfg, out, progress=progress)
    b.tokenize()
    b.plan()
    b.pack()
    b.write_manifest()
    return b


@pytest.fixture(scope="session")
def corpora(tmp_path_factory):
    """Two constructed sources: `alpha` (300 docs, gz) and `beta` (60 docs)."""
    tmp = tmp_path_factory.mktemp("mixdata")
    docs = {"alpha": make_docs(300, 1, "alpha"), "beta": make_docs(60, 2, "beta")}
    write_jsonl(tmp / "data" / "corpora" / "alpha" / "part-0.jsonl.gz", docs["alpha"][:150], gz=True)
    write_jsonl(tmp / "data" / "corpora" / "alpha" / "part-1.jsonl.gz", docs["alpha"][150:], gz=True)
    write_jsonl(tmp / "data" / "corpora" / "beta" / "beta.jsonl", docs["beta"])
    return tmp, docs


@pytest.fixture(scope="session")
def packed(corpora):
    """A packed mixture of the two sources: beta repeated ~3 epochs, small shards."""
    tmp, docs = corpora
    cfg = mix_config(tmp, {"alpha": {"path": "corpora/alpha", "weight": 0.6},
                           "beta": {"path": "corpora/beta", "weight": 0.4}},
                     total_tokens=20_000, seq_len=32, val_fraction=0.1, shard_tokens=32 * 100)
    return build(cfg), docs
