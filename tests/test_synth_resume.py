"""Stage 01 resume: a run killed midway (os._exit, no cleanup) and rerun neither loses nor
duplicates a record, keeps what the first run wrote, and never mixes records of two configs
(a run changed, then killed, then resumed)."""
import multiprocessing as mp

import pytest

from phi_lib.config import load
from phi_lib.io import iter_jsonl_files, read_jsonl
from phi_lib.synth import generation_fingerprint
from synth_doubles import ScriptedBackend, run_steps

pytestmark = pytest.mark.unit

KINDS = {"textbook": 7, "code_textbook": 5}
IDS = {f"textbook-{i:07d}" for i in range(7)} | {f"code_textbook-{i:07d}" for i in range(5)}


def answer(prompt, seed):
    # distinct, long enough, non-repetitive text per record
    return f"Sample {seed}. " + " ".join(f"w{seed % 997}x{i}" for i in range(60))


def config(root, **over):
    cfg = load("params/smoke.yaml", {"run.output_root": str(root), **over})
    cfg.synth.kinds = dict(KINDS)
    cfg.synth.batch_prompts, cfg.synth.shard_size = 2, 4
    cfg.synth.decontaminate_against = cfg.synth.decontaminate_code_against = []
    return cfg


def _run(root, die_on_call, over):
    run_steps(config(root, **over), ScriptedBackend(answer, die_on_call))


def killed(root, die_on_call, **over):
    p = mp.get_context("fork").Process(target=_run, args=(str(root), die_on_call, over))
    p.start()
    p.join(120)
    assert p.exitcode == 9  # killed at the start of that backend call


def records(folder):
    return [r for f in iter_jsonl_files(folder) for r in read_jsonl(f)]


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "smoke" / "01_synthesize"
    killed(tmp_path, 4)
    [partial] = list((out / ".generated").rglob(".shard.partial"))  # an unsealed shard
    first = {r["id"]: r for r in records(out / ".generated") + list(read_jsonl(partial))}
    assert len(first) == 6  # 3 calls x 2 prompts written before the kill: 4 sealed, 2 partial
    _run(tmp_path, None, {})
    raw = records(out / ".generated")
    ids = [r["id"] for r in raw]
    assert len(ids) == len(set(ids)) == 12 and set(ids) == IDS
    by_id = {r["id"]: r for r in raw}
    assert all(by_id[k] == v for k, v in first.items())  # nothing rewritten
    assert not list(out.rglob(".shard.partial"))
    samples = records(out / "textbook") + records(out / "code_textbook") + records(out / ".dropped")
    assert sorted(r["id"] for r in samples) == sorted(IDS)
    # a third run finds everything done and asks the backend for nothing
    backend = ScriptedBackend(answer)
    run_steps(config(tmp_path), backend)
    assert backend.calls == 0 and len(records(out / ".generated")) == 12


def test_changed_then_killed_run_never_mixes_configs(tmp_path):
    """Finish at the smoke's temperature (0.5), change to 0.9, die midway, resume: every
    record (raw, kept, dropped) is of the 0.9 run, each id once."""
    out = tmp_path / "smoke" / "01_synthesize"
    _run(tmp_path, None, {})
    old = generation_fingerprint(config(tmp_path)).key
    new_cfg = config(tmp_path, **{"synth.sampling.temperature": 0.9})
    new = generation_fingerprint(new_cfg).key
    assert new != old
    killed(tmp_path, 3, **{"synth.sampling.temperature": 0.9})
    mid = records(out / ".generated") + [r for f in out.rglob(".shard.partial") for r in read_jsonl(f)]
    assert {r["fingerprint"] for r in mid} == {new} and len(mid) == 4  # the old ones are gone
    samples = records(out / "textbook") + records(out / "code_textbook") + records(out / ".dropped")
    assert all(r["fingerprint"] != old for r in samples)  # pruned from kept/dropped as well
    backend = ScriptedBackend(answer)
    run_steps(new_cfg, backend)
    assert len(backend.prompts) == 8  # only the 8 not yet generated at 0.9
    for folder in (".generated", "textbook", "code_textbook", ".dropped"):
        recs = records(out / folder)
        assert {r["fingerprint"] for r in recs} == ({new} if folder != ".dropped" else set()), folder
        assert all(r["sampling"]["temperature"] == 0.9 for r in recs)
    ids = [r["id"] for f in ("textbook", "code_textbook", ".dropped") for r in records(out / f)]
    assert len(ids) == len(set(ids)) == 12 and set(ids) == IDS
