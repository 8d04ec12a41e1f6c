"""Stage 07 provenance (issue 12): ToxiGen per-group results, completions and judge grades
carry the fingerprint of what produced them (settings, the content identity of the model or
judge, the data files, the graded completion); stale ones are redone, only those, and none
remains. The confirming tests failed before the fix: a retrained checkpoint with the same
file sizes and times kept its old perplexities (the identity was path + sizes + times), a
new `toxicity.sampling` kept the old completions, a new judge format kept the old grades.

Library level on random phi-tiny models (seconds each); through the runner on the smoke
run: `test_eval_safety_runner.py`."""
import json
import os

import pytest
import torch

from phi_lib.config import load
from phi_lib.hf_models import model_slug
from phi_lib.safety import judge
from phi_lib.safety.stage import ToxicityStage

pytestmark = pytest.mark.slow


def _checkpoint(folder, seed):
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.checkpoint import save_pretrained

    torch.manual_seed(seed)
    return save_pretrained(PhiForCausalLM(PhiConfig.from_preset("phi-tiny")).eval(), folder)


def _retrain_keeping_size_and_mtime(folder, seed):
    """Other weights in place of the checkpoint, every file's size and time kept (as a copy
    with `cp -p` or `rsync -a` of a checkpoint trained elsewhere gives)."""
    times = {f.name: f.stat() for f in folder.iterdir()}
    _checkpoint(folder, seed)
    for name, st in times.items():
        os.utime(folder / name, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def setup(tmp_path):
    """A run with a checkpoint, a second tiny model as reference, a third as judge."""
    ref, jdg = _checkpoint(tmp_path / "ref", 5), _checkpoint(tmp_path / "judge", 7)
    over = {"run.output_root": str(tmp_path), "run.name": "run",
            "toxicity.models": ["checkpoint", str(ref)], "toxicity.groups": ["women", "muslim"],
            "toxicity.per_group": 3, "toxicity.probe_limit": 2, "toxicity.device": "cpu",
            "toxicity.sampling.max_new_tokens": 4, "toxicity.judge.model": str(jdg),
            "toxicity.judge.device": "cpu", "toxicity.judge_sampling.max_new_tokens": 3}
    cfg = load("params/smoke.yaml", over)
    ckpt = _checkpoint(cfg.run_dir / "05_train" / "checkpoints" / "step-1", 0)
    return (lambda **more: load("params/smoke.yaml", {**over, **more})), ckpt, str(ref)


def _lines(folder, pattern="*.jsonl"):
    return [json.loads(x) for f in sorted(folder.glob(pattern)) for x in f.read_text().splitlines()]


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.jsonl")}


def test_toxigen_groups_of_a_retrained_checkpoint_are_rescored(setup):
    cfg_of, ckpt, ref = setup
    stage = ToxicityStage(cfg_of())
    stage.toxigen_scores(progress=False)
    before = stage.scores()
    ref_dir = stage.out / "toxigen" / model_slug(ref)
    ref_times = _mtimes(ref_dir)
    _retrain_keeping_size_and_mtime(ckpt, 1)
    stage = ToxicityStage(cfg_of())
    stage.toxigen_scores(progress=False)
    after = stage.scores()
    for g in ("women", "muslim"):
        assert after["checkpoint"][g].mean_nll_toxic != before["checkpoint"][g].mean_nll_toxic
        recs = _lines(stage.out / "toxigen" / "checkpoint", f"{g}.jsonl")
        assert {r["fingerprint"] for r in recs} == {stage.group_fingerprint("checkpoint", g).key}
    assert _mtimes(ref_dir) == ref_times and after[ref] == before[ref]  # reference reused
    assert stage.step_stats("toxigen")["counts"]["toxigen_groups_scored"] == 2

    # fewer groups: the dropped group's file goes; alpha only re-reads; batch_size is operational
    stage = ToxicityStage(cfg_of(**{"toxicity.groups": ["women"], "toxicity.alpha": 0.2,
                                    "toxicity.batch_size": 3}))
    stage.toxigen_scores(progress=False)
    assert stage.step_stats("toxigen")["counts"]["toxigen_groups_scored"] == 0
    assert sorted(_mtimes(ref_dir)) == ["women.jsonl"]


def test_completions_and_grades_follow_what_produced_them(setup):
    cfg_of, ckpt, ref = setup
    stage = ToxicityStage(cfg_of())
    stage.complete_probes(progress=False)
    stage.judge_probes(progress=False)
    first = {g["item"]: g for g in stage.grades()}
    assert len(first) == 4

    # a new sampling: every completion redone, none of the old fingerprint left, all regraded
    longer = ToxicityStage(cfg_of(**{"toxicity.sampling.max_new_tokens": 6}))
    longer.complete_probes(progress=False)
    for model in ("checkpoint", ref):
        recs = _lines(longer.out / "completions" / model_slug(model))
        assert len(recs) == 2 and {r["fingerprint"] for r in recs} == \
            {longer.completions_fingerprint(model).key}
    assert longer.step_stats("completions")["counts"]["completions_stale_removed"] == 4
    longer.judge_probes(progress=False)
    assert _new_grades(longer) == 4 and longer.step_stats("judge")["counts"]["judge_stale_removed"] == 4
    grades = _lines(longer.out / "grades_judge")
    current = {judge.item_key(c): longer.grade_fingerprint(c).key for c in longer.completions()}
    assert {g["item"]: g["fingerprint"] for g in grades} == current  # no stale grade remains

    # a retrained checkpoint: its completions and their grades only
    _retrain_keeping_size_and_mtime(ckpt, 1)
    stage = ToxicityStage(cfg_of(**{"toxicity.sampling.max_new_tokens": 6}))
    ref_times = _mtimes(stage.out / "completions" / model_slug(ref))
    stage.complete_probes(progress=False)
    assert stage.step_stats("completions")["counts"]["completions_new"] == 2
    assert _mtimes(stage.out / "completions" / model_slug(ref)) == ref_times
    stage.judge_probes(progress=False)
    changed = [c for c in stage.completions() if c["model"] == "checkpoint"
               and judge.item_key(c) not in current]
    assert _new_grades(stage) == len(changed)  # a completion of the same text keeps its grade

    # a new judge format: every grade redone, under the new fingerprint
    fmt = ToxicityStage(cfg_of(**{"toxicity.sampling.max_new_tokens": 6,
                                  "toxicity.judge_format": "completion"}))
    fmt.judge_probes(progress=False)
    assert _new_grades(fmt) == 4
    assert {g["fingerprint"] for g in fmt.grades()} == \
        {fmt.grade_fingerprint(c).key for c in fmt.completions()}
    assert len(_lines(fmt.out / "grades_judge")) == 4

    # operational: batch sizes and devices change no fingerprint, so nothing is redone
    op = ToxicityStage(cfg_of(**{"toxicity.sampling.max_new_tokens": 6,
                                 "toxicity.judge_format": "completion", "toxicity.batch_size": 3,
                                 "toxicity.judge.batch_size": 3}))
    op.complete_probes(progress=False)
    op.judge_probes(progress=False)
    assert _new_grades(op) == 0 and op.step_stats("completions")["counts"]["completions_new"] == 0
    assert op.fingerprint.key == fmt.fingerprint.key


def _new_grades(stage):
    return stage.step_stats("judge")["counts"]["judge_graded_new"]


def test_judge_identity_is_the_judge_models_content(setup):
    cfg_of, ckpt, ref = setup
    a = ToxicityStage(cfg_of(**{"toxicity.judge.model": "checkpoint"}))
    before = a.judge_identity
    _retrain_keeping_size_and_mtime(ckpt, 1)
    b = ToxicityStage(cfg_of(**{"toxicity.judge.model": "checkpoint"}))
    assert b.judge_identity != before and b.identities["checkpoint"] == b.judge_identity
    http = ToxicityStage(cfg_of(**{"toxicity.judge.kind": "openai", "toxicity.judge.model": "m",
                                   "toxicity.judge.base_urls": ["http://x:1/v1"]}))
    assert http.judge_identity == "name:m"
