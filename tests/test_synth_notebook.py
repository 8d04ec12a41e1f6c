"""Notebook 01_synthesize in the smoke run: real smollm2 generations, filtered, reported."""
import json

import pytest

from phi_lib.io import iter_jsonl_files, read_jsonl

pytestmark = pytest.mark.notebooks


def test_stage_01_outputs(smoke_run):
    out = smoke_run.cfg.run_dir / "01_synthesize"
    m = json.loads((out / "manifest.json").read_text())
    kinds = smoke_run.cfg.synth.kinds
    for kind, n in kinds.items():
        kept = [r for f in iter_jsonl_files(out / kind) for r in read_jsonl(f)]
        dropped = [r for f in iter_jsonl_files(out / ".dropped" / kind) for r in read_jsonl(f)]
        assert len(kept) + len(dropped) == n == m["counts"][f"{kind}/generated"]
        assert len(kept) == m["counts"][f"{kind}/kept"]
        assert all(r["drop_reason"] for r in dropped)
        assert all(r.get("drop_detail") for r in dropped  # says which check and why
                   if r["drop_reason"] in ("exercise_truncated", "exercise_failed"))
        for r in kept:
            assert r["backend"] == "transformers" and r["model"] == "smollm2" and r["text"]
        assert m["metrics"][f"{kind}/tokens"] == sum(r["completion_tokens"] for r in kept)
    assert m["counts"]["textbook/kept"] > 0  # smollm2 writes something that passes
    assert 0 < m["metrics"]["all/embedding_spread"] <= 2
    # stage 01 checks exercises in the sandbox: the manifest says behind which walls
    assert m["sandbox"]["level"] == smoke_run.cfg.synth.sandbox_isolation and m["sandbox"]["ok"]
    for fig in m["figures"]:
        assert (out / fig).stat().st_size > 1000
