"""Stage 01 resume: a run killed midway (os._exit, no cleanup) and rerun neither loses nor
duplicates a record, and keeps what the first run wrote."""
import multiprocessing as mp

import pytest

from phi_lib.config import load
from phi_lib.io import iter_jsonl_files, read_jsonl
from phi_lib.synth import Synthesizer, build_prompts, seed_taxonomy
from synth_doubles import ScriptedBackend

pytestmark = pytest.mark.unit


def answer(prompt, seed):
    # distinct, long enough, non-repetitive text per record
    return f"Sample {seed}. " + " ".join(f"w{seed % 997}x{i}" for i in range(60))


def _run(root, die_on_call):
    cfg = load("params/smoke.yaml", {"run.output_root": root})
    cfg.synth.kinds = {"textbook": 7, "code_textbook": 5}
    cfg.synth.batch_prompts, cfg.synth.shard_size = 2, 4
    cfg.synth.decontaminate_against = []
    specs = build_prompts(cfg.synth, seed_taxonomy(), cfg.run.seed)
    Synthesizer(cfg, f"{root}/01_synthesize", ScriptedBackend(answer, die_on_call)).run(
        specs, progress=False)


def records(out):
    return [r for f in iter_jsonl_files(out) for r in read_jsonl(f)]


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "01_synthesize"
    p = mp.get_context("fork").Process(target=_run, args=(str(tmp_path), 4))
    p.start()
    p.join(120)
    assert p.exitcode == 9  # killed at the start of the 4th backend call
    [partial] = list(out.rglob(".shard.partial"))  # the kill left an unsealed shard behind
    first = {r["id"]: r for r in records(out) + list(read_jsonl(partial))}
    assert len(first) == 6  # 3 calls x 2 prompts written before the kill: 4 sealed, 2 partial
    _run(str(tmp_path), None)
    after = records(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == 12
    assert set(ids) == {f"textbook-{i:07d}" for i in range(7)} | {
        f"code_textbook-{i:07d}" for i in range(5)}
    by_id = {r["id"]: r for r in after}
    assert all(by_id[k] == v for k, v in first.items())  # nothing rewritten
    assert not list(out.rglob(".shard.partial"))
    # a third run finds everything done and asks the backend for nothing
    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path)})
    cfg.synth.kinds, cfg.synth.decontaminate_against = {"textbook": 7, "code_textbook": 5}, []
    backend = ScriptedBackend(answer)
    Synthesizer(cfg, out, backend).run(build_prompts(cfg.synth, seed_taxonomy(), cfg.run.seed),
                                       progress=False)
    assert backend.calls == 0 and len(records(out)) == 12
