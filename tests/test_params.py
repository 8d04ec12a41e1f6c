"""Every shipped params file loads, and the recipes carry the papers' hyper-parameters."""
from pathlib import Path

import pytest

from phi_lib.config import load
from phi_lib.paths import project_root
from phi_lib.sweep import load_sweep

pytestmark = pytest.mark.unit
PARAMS = sorted((project_root() / "params").glob("*.yaml"))
SWEEPS = sorted((project_root() / "params" / "sweeps").glob("*.yaml"))


def test_every_system_of_the_papers_has_a_params_file():
    names = {p.stem for p in PARAMS}
    assert {"smoke", "phi-1-small", "phi-1-base", "phi-1", "phi-1.5", "phi-1.5-web",
            "phi-1.5-web-only", "phi-2", "phi-3-mini", "phi-3-mini-128k", "phi-3.5-mini",
            "phi-3-medium", "phi-3-medium-128k", "phi-3-small", "phi-3-vision"} <= names


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_params_file_loads(path: Path):
    cfg = load(path)
    assert cfg.run.name == path.stem


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_loads(path: Path):
    spec = load_sweep(path)
    assert spec["variants"]


def test_phi_1_5_recipe():
    t = load(project_root() / "params/phi-1.5.yaml").train
    assert (t.optimizer, t.lr, t.betas, t.eps, t.weight_decay) == ("adam", 2e-4, [0.9, 0.98], 1e-7, 0.1)
    assert (t.schedule, t.warmup_steps, t.precision, t.zero_stage) == ("constant", 0, "fp16", 2)
    assert t.global_batch_size == 2048
    m = load(project_root() / "params/phi-1.5.yaml").mix
    assert m.seq_len == 2048 and m.total_tokens == 150_000_000_000
    assert sorted(s.weight for s in m.sources.values()) == [0.2, 0.8]


def test_phi_1_5_web_mixtures():
    web = load(project_root() / "params/phi-1.5-web.yaml").mix.sources
    assert sorted(s.weight for s in web.values()) == [0.2, 0.4, 0.4]
    only = load(project_root() / "params/phi-1.5-web-only.yaml").mix.sources
    assert sorted(s.weight for s in only.values()) == [0.2, 0.8]


def test_phi_1_recipe_and_finetune():
    cfg = load(project_root() / "params/phi-1.yaml")
    t = cfg.train
    assert (t.optimizer, t.lr, t.schedule, t.warmup_steps, t.weight_decay) == ("adamw", 1e-3, "linear", 750, 0.1)
    assert (t.global_batch_size, t.max_steps) == (1024, 36000)
    assert (cfg.model.resid_pdrop, cfg.model.attention_dropout) == (0.1, 0.1)
    f = t.finetune
    assert (f.enabled, f.lr, f.warmup_steps, f.weight_decay, f.global_batch_size, f.max_steps) == (
        True, 1e-4, 50, 0.01, 256, 6000)
    # stage 03 packs CodeExercises; its budget is what the finetune consumes (6K x 256 x 2048)
    assert cfg.mix.finetune.source == "01_synthesize/code_exercises"
    assert cfg.mix.finetune.total_tokens == 6000 * 256 * 2048
    # phi-1 is a finetune of phi-1-base, the 24K-step checkpoint of the 36K-step run
    assert (t.max_steps, t.stop_at, f.from_step, f.select_by) == (36000, 24000, 24000, "val_loss")
    base = load(project_root() / "params/phi-1-base.yaml")
    assert (base.train.max_steps, base.train.stop_at) == (36000, 24000)
    assert not base.train.finetune.enabled
    assert base.mix.finetune.source is None
    assert load(project_root() / "params/phi-1-small.yaml").model.preset == "phi-1-small"


def test_phi_3_mini_two_phases():
    cfg = load(project_root() / "params/phi-3-mini.yaml")
    m = cfg.mix
    assert m.total_tokens == 3_300_000_000_000 and m.seq_len == 4096
    first, second = m.phases
    assert second.until_tokens == m.total_tokens > first.until_tokens
    # phase 1 mostly filtered web, phase 2 filtered web plus synthetic data (the report)
    assert first.weights["web"] >= 0.8 and "synthetic" not in first.weights
    assert second.weights["synthetic"] > 0 and second.weights["web"] > 0
    # the sources' weights are the two phases' overall shares
    span = [first.until_tokens, second.until_tokens - first.until_tokens]
    for name, src in m.sources.items():
        share = sum(ph.weights.get(name, 0) * n for ph, n in zip(m.phases, span)) / m.total_tokens
        assert src.weight == pytest.approx(share, abs=1e-3), name
    assert (cfg.model.preset, cfg.model.tokenizer, cfg.train.precision) == ("phi-3-mini", "phi-3-mini", "bf16")


def test_long_context_stages_start_from_their_pretraining():
    for name, base in (("phi-3-mini-128k", "phi-3-mini"), ("phi-3-medium-128k", "phi-3-medium")):
        cfg, pre = load(project_root() / f"params/{name}.yaml"), load(project_root() / f"params/{base}.yaml")
        assert cfg.train.init_from == f"outputs/{base}/05_train/checkpoints/step-{pre.train.max_steps}"
        assert cfg.mix.seq_len > 4096 and not cfg.mix.phases  # past the short LongRoPE factors
