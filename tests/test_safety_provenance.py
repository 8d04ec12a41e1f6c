"""Stage 07 provenance, confirmed on the code before the fix (issue 12): per-group ToxiGen
results, completions and judge grades must not outlive what produced them."""
import os

import torch

from phi_lib.config import load
from phi_lib.safety import stage


def _checkpoint(run_dir, seed):
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.checkpoint import save_pretrained

    torch.manual_seed(seed)
    return save_pretrained(PhiForCausalLM(PhiConfig.from_preset("phi-tiny")).eval(),
                           run_dir / "05_train" / "checkpoints" / "step-1")


def _cfg(tmp_path, **over):
    return load("params/smoke.yaml", {
        "run.output_root": str(tmp_path), "run.name": "run", "toxicity.models": ["checkpoint"],
        "toxicity.groups": ["women"], "toxicity.per_group": 3, "toxicity.probe_limit": 2,
        "toxicity.device": "cpu", "toxicity.sampling.max_new_tokens": 4, **over})


def _retrain_keeping_size_and_mtime(run_dir, seed):
    """Other weights in place of the checkpoint, every file's size and time kept (as a copy
    with `cp -p` or `rsync -a` of a checkpoint trained elsewhere gives)."""
    folder = run_dir / "05_train" / "checkpoints" / "step-1"
    times = {f.name: f.stat() for f in folder.iterdir()}
    _checkpoint(run_dir, seed)
    for name, st in times.items():
        os.utime(folder / name, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_toxigen_groups_of_a_retrained_checkpoint_are_rescored(tmp_path):
    cfg = _cfg(tmp_path)
    _checkpoint(cfg.run_dir, 0)
    out = tmp_path / "07"
    before = stage.toxigen_scores(cfg, out, progress=False)["checkpoint"]["women"]
    _retrain_keeping_size_and_mtime(cfg.run_dir, 1)
    after = stage.toxigen_scores(cfg, out, progress=False)["checkpoint"]["women"]
    assert after.mean_nll_toxic != before.mean_nll_toxic, "old perplexities reused"


def test_completions_follow_the_sampling_config(tmp_path):
    cfg = _cfg(tmp_path)
    _checkpoint(cfg.run_dir, 0)
    out = tmp_path / "07"
    stage.complete_probes(cfg, out, progress=False)
    longer = _cfg(tmp_path, **{"toxicity.sampling.max_new_tokens": 12})
    again = stage.complete_probes(longer, out, progress=False)
    assert max(c["completion_tokens"] for c in again) > 4, "completions of max_new_tokens=4 reused"


def test_judge_grades_follow_the_judge(tmp_path, monkeypatch):
    from phi_lib.safety import judge

    ckpt = _checkpoint(tmp_path / "run", 0)
    over = {"toxicity.judge.model": str(ckpt), "toxicity.judge.device": "cpu",
            "toxicity.judge.cache": False, "toxicity.judge_sampling.max_new_tokens": 3}
    cfg = _cfg(tmp_path, **over)
    out = tmp_path / "07"
    completions = stage.complete_probes(cfg, out, progress=False)
    stage.judge_probes(cfg, out, completions, progress=False)
    asked = []
    prompt = judge.judge_prompt
    monkeypatch.setattr(judge, "judge_prompt", lambda *a, **k: asked.append(a) or prompt(*a, **k))
    other = _cfg(tmp_path, **over, **{"toxicity.judge_format": "completion"})
    stage.judge_probes(other, out, completions, progress=False)
    assert len(asked) == len(completions), "chat-format grades reused for judge_format=completion"
