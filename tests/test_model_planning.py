"""Preset sizes (on the meta device: instant), FLOPs and memory arithmetic, config plumbing."""
import pytest
import torch

from phi_lib.config import load
from phi_lib.model import PRESETS, PhiConfig, PhiForCausalLM
from phi_lib.model.planning import flops_per_token, memory_per_gpu, memory_table, param_count

pytestmark = pytest.mark.unit

# Published sizes of the real models (vocab 51200; phi-3 32064).
MINI, MEDIUM = 3_821_079_552, 13_960_238_080
REAL = {"phi-1-small": 356_794_368, "phi-1": 1_418_270_720, "phi-1.5": 1_418_270_720,
        "phi-2": 2_779_683_840, "phi-3-mini": MINI, "phi-3-mini-4k": MINI, "phi-3-mini-128k": MINI,
        "phi-3.5-mini": MINI, "phi-3-medium": MEDIUM, "phi-3-medium-4k": MEDIUM,
        "phi-3-medium-128k": MEDIUM}


def meta_model(cfg):
    with torch.device("meta"):
        return PhiForCausalLM(cfg)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_counts(preset):
    cfg = PhiConfig.from_preset(preset)
    model = meta_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert param_count(cfg)["total"] == n
    if preset in REAL:
        assert n == REAL[preset]
    by_module = {"embedding": model.model.embed_tokens.weight.numel(),
                 "lm_head": sum(p.numel() for p in model.lm_head.parameters())}
    counts = param_count(cfg)
    assert counts["embedding"] == by_module["embedding"] and counts["lm_head"] == by_module["lm_head"]
    assert counts["non_embedding"] == n - by_module["embedding"]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p in REAL])
def test_transformers_counts_the_same_parameters(preset):
    """transformers' own model of the config.json we write, on the meta device."""
    import transformers

    hf = PhiConfig.from_preset(preset).to_hf_dict()
    cls = transformers.PhiForCausalLM if hf["model_type"] == "phi" else transformers.Phi3ForCausalLM
    with torch.device("meta"):
        theirs = cls(transformers.AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "architectures"}))
    assert sum(p.numel() for p in theirs.parameters()) == REAL[preset]


def test_phi_tiny_is_smoke_sized():
    cfg = PhiConfig.from_preset("phi-tiny")
    assert cfg.vocab_size == 51200 and cfg.rotary_dim == 32 and cfg.max_position_embeddings == 2048
    assert 2 <= cfg.num_hidden_layers <= 4 and 64 <= cfg.hidden_size <= 128


def test_counts_match_param_count_with_gqa_and_ties():
    for cfg in (PhiConfig.from_preset("phi-3-mini", num_key_value_heads=8),
                PhiConfig.from_preset("phi-tiny", tie_word_embeddings=True, qk_layernorm=True)):
        assert param_count(cfg)["total"] == sum(p.numel() for p in meta_model(cfg).parameters())


def test_flops_per_token():
    cfg = PhiConfig.from_preset("phi-1.5")
    n = param_count(cfg)["non_embedding"]
    f = flops_per_token(cfg, 2048)
    assert f == 6 * n + 12 * 24 * 2048 * 2048
    assert 8.5e9 < f < 9.5e9  # ~9 GFLOPs per token: 6 x 1.3B + attention
    assert flops_per_token(cfg, 4096) > f


def test_memory_per_gpu_zero_stages():
    cfg = PhiConfig.from_preset("phi-1.5")
    n = param_count(cfg)["total"] / 1024 ** 3
    rows = {z: memory_per_gpu(cfg, z, "fp16", 8, 8, 2048) for z in (0, 1, 2, 3)}
    assert rows[0]["params"] == pytest.approx(2 * n) and rows[0]["optimizer_states"] == pytest.approx(12 * n)
    assert rows[1]["optimizer_states"] == pytest.approx(12 * n / 8)
    assert rows[2]["grads"] == pytest.approx(2 * n / 8)
    assert rows[3]["params"] == pytest.approx(2 * n / 8)
    totals = [rows[z]["total"] for z in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True)
    assert rows[0]["activations"] == rows[3]["activations"] > 0
    assert memory_per_gpu(cfg, 2, "bf16", 8, 8, 2048) == rows[2]
    fp32 = memory_per_gpu(cfg, 0, "fp32", 1, 1, 2048)
    assert fp32["params"] == pytest.approx(4 * n) and fp32["optimizer_states"] == pytest.approx(8 * n)
    ckpt = memory_per_gpu(cfg, 2, "fp16", 8, 8, 2048, activation_checkpointing=True)
    assert ckpt["activations"] < rows[2]["activations"]
    assert len(memory_table(cfg, 8, 8, 2048)) == 8
    with pytest.raises(ValueError, match="zero_stage"):
        memory_per_gpu(cfg, 4, "fp16", 8, 8, 2048)


def test_from_model_config_applies_overrides():
    cfg = load({"model": {"preset": "phi-1", "num_hidden_layers": 12, "resid_pdrop": 0.1,
                          "attn_implementation": "eager"}})
    pc = PhiConfig.from_model_config(cfg.model)
    assert pc.num_hidden_layers == 12 and pc.resid_pdrop == 0.1 and pc.hidden_size == 2048
    assert pc.attn_implementation == "eager" and pc.name == "phi-1"


def test_bad_preset_and_fields():
    with pytest.raises(ValueError, match="did you mean 'phi-2'"):
        PhiConfig.from_preset("phi2")
    with pytest.raises(ValueError, match="hidden_sise"):
        PhiConfig.from_preset("phi-2", hidden_sise=10)
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        PhiConfig.from_preset("phi-tiny", hidden_size=100, num_attention_heads=3)


def test_hf_config_round_trip():
    for preset in PRESETS:
        cfg = PhiConfig.from_preset(preset)
        back = PhiConfig.from_hf_dict(cfg.to_hf_dict())
        assert back.replace(name="") == cfg.replace(name=""), preset
