"""The Phi-3 family against transformers.Phi3ForCausalLM on shrunken configs: LongRoPE below and
above original_max_position_embeddings, medium's grouped-query attention, generation across
the LongRoPE switch, checkpoints both ways, and the sizes of the published configs."""
import json
import math

import pytest
import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.parity import kv_cache_max_abs_diff, parity_check, shrink, to_transformers
from phi_lib.model.planning import param_count
from phi_lib.model.rotary import RotaryEmbedding, longrope_attention_factor
from phi_lib.paths import data_path

pytestmark = pytest.mark.unit
TOL = 1e-5
ORIGINAL = 16  # the shrunken original context: LongRoPE switches past 16 positions


def small(preset: str, heads: int = 2, **kw) -> PhiConfig:
    # LongRoPE keeps its factors and its 32x context ratio over an original context of 16
    return shrink(PhiConfig.from_preset(preset), heads=heads, vocab=512, original_context=ORIGINAL).replace(**kw)


CASES = {
    "phi-3-mini-128k": small("phi-3-mini-128k"),
    "phi-3.5-mini": small("phi-3.5-mini"),
    "phi-3-medium GQA 4:1": small("phi-3-medium", heads=4, sliding_window=None),
    "phi-3-medium 4K window": small("phi-3-medium", heads=4, sliding_window=7),
    "phi-3-medium-128k GQA": small("phi-3-medium-128k", heads=4),
}


def pair(cfg: PhiConfig, seed: int = 0):
    torch.manual_seed(seed)
    ours = PhiForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a mix-up shows
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return ours, to_transformers(ours)


def batch(cfg, t, pad=(0, 5, 9), seed=1):
    ids = torch.randint(0, cfg.vocab_size, (len(pad), t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
    return ids, mask


def test_shrunk_configs_keep_what_is_tested():
    cfg = CASES["phi-3-medium GQA 4:1"]
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 1, 128)
    long = CASES["phi-3-mini-128k"]
    assert (long.original_max_position_embeddings, long.max_position_embeddings) == (ORIGINAL, 32 * ORIGINAL)
    assert long.rope_long_factor == PhiConfig.from_preset("phi-3-mini-128k").rope_long_factor


@pytest.mark.parametrize("preset", ["phi-3-mini-128k", "phi-3-medium"])
def test_parity_check_library_function(preset):
    report = parity_check(PhiConfig.from_preset(preset))  # what stage 04 reports
    assert report["shrunk"] and report["max_abs_diff"] < TOL and report["kv_cache_max_abs_diff"] < TOL
    assert ("longrope_short_max_abs_diff" in report) == (preset == "phi-3-mini-128k")


@pytest.mark.parametrize("t", [ORIGINAL, ORIGINAL + 1, 3 * ORIGINAL])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_logits_match_transformers_below_and_above_the_switch(name, t):
    cfg = CASES[name]
    ours, theirs = pair(cfg)
    ids, mask = batch(cfg, t)
    assert (ours(ids) - theirs(ids).logits).abs().max().item() < TOL
    real = mask.bool()
    diff = (ours(ids, attention_mask=mask) - theirs(ids, attention_mask=mask).logits)[real]
    assert diff.abs().max().item() < TOL


@pytest.mark.parametrize("preset", ["phi-3-mini-128k", "phi-3-medium-128k"])
@torch.no_grad()
def test_longrope_cos_sin_equal_transformers_bit_for_bit(preset):
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    cfg = small(preset)
    ours = RotaryEmbedding(cfg)
    theirs = Phi3RotaryEmbedding(to_transformers(PhiForCausalLM(cfg)).config)
    x = torch.zeros(1, dtype=torch.float32)
    for t in (ORIGINAL, ORIGINAL + 1, 5 * ORIGINAL):
        pos = torch.arange(t)[None]
        for a, b in zip(ours(pos, torch.float32), theirs(x, pos)):
            assert torch.equal(a, b), t
    # the switch is on the largest position of the call, not on the count of tokens
    one = torch.tensor([[ORIGINAL]])
    assert torch.equal(ours(one, torch.float32)[0], theirs(x, one)[0])
    assert ours.scale == theirs.attention_scaling == pytest.approx(math.sqrt(1 + math.log(32) / math.log(16)))


def test_attention_factor_of_the_published_128k_config():
    cfg = PhiConfig.from_preset("phi-3-mini-128k")
    assert longrope_attention_factor(cfg) == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    assert longrope_attention_factor(PhiConfig.from_preset("phi-3-mini")) == 1.0  # plain RoPE: none


@pytest.mark.parametrize("name", ["phi-3-mini-128k", "phi-3-medium GQA 4:1", "phi-3-medium 4K window"])
@torch.no_grad()
def test_kv_cache_incremental_equals_full_forward(name):
    ours, _ = pair(CASES[name])
    ids, _ = batch(CASES[name], ORIGINAL)  # within the short-factor range
    assert kv_cache_max_abs_diff(ours, ids, prefix=3) < TOL
    long_ids, _ = batch(CASES[name], 2 * ORIGINAL)
    # prefilled past the switch: every key is rotated with the long factors, steps agree too
    assert kv_cache_max_abs_diff(ours, long_ids, prefix=ORIGINAL + 2) < TOL


@pytest.mark.parametrize("name", ["phi-3-mini-128k", "phi-3-medium-128k GQA"])
@torch.no_grad()
def test_greedy_generation_across_the_switch_matches_transformers(name):
    cfg = CASES[name].replace(eos_token_id=None)
    ours, theirs = pair(cfg)
    ids, mask = batch(cfg, ORIGINAL - 4, pad=(0, 3, 6))
    new = 14  # crosses original_max (16) after 4 tokens and goes on 10 more
    mine = ours.generate(ids, mask, max_new_tokens=new, temperature=0.0, eos_token_id=None)
    ref = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    assert torch.equal(mine, ref)
    assert torch.equal(ours.generate(ids[:1], max_new_tokens=new, eos_token_id=None),
                       theirs.generate(input_ids=ids[:1], max_new_tokens=new, do_sample=False,
                                       pad_token_id=0, eos_token_id=None))


@torch.no_grad()
def test_the_recompute_at_the_switch_matters():
    # Keys cached with the short factors and continued past the switch differ from a full
    # forward: without the recompute generation would drift from transformers.
    ours, _ = pair(CASES["phi-3-mini-128k"])
    ids, _ = batch(CASES["phi-3-mini-128k"], ORIGINAL + 4, pad=(0,))
    assert kv_cache_max_abs_diff(ours, ids, prefix=ORIGINAL - 2) > 1e-3


@pytest.mark.parametrize("name", ["phi-3-mini-128k", "phi-3-medium GQA 4:1", "phi-3-medium 4K window"])
@torch.no_grad()
def test_saved_checkpoint_loads_in_transformers_and_back(tmp_path, name):
    from transformers import AutoModelForCausalLM

    ours, _ = pair(CASES[name])
    ours.save_pretrained(tmp_path / "ours")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Phi3ForCausalLM"
    ids, _ = batch(CASES[name], 2 * ORIGINAL)
    assert (ours(ids) - theirs(ids).logits).abs().max() < TOL
    theirs.save_pretrained(tmp_path / "theirs")
    back = PhiForCausalLM.from_pretrained(tmp_path / "theirs")
    assert back.config.replace(name="") == ours.config.replace(name="", attn_implementation="auto")
    assert (back(ids) - theirs(ids).logits).abs().max() < TOL


PUBLISHED = {"Phi-3-mini-128k-instruct.json": ("phi-3-mini-128k", 3_821_079_552)}


@pytest.mark.parametrize("file", list(PUBLISHED))
def test_published_config_json_builds_the_preset_with_its_size(file):
    src = data_path(f"tokenizers/phi-3-configs/{file}")
    if src is None:
        pytest.skip("data folder not available")
    import transformers

    preset, size = PUBLISHED[file]
    hf = json.loads(src.read_text())
    cfg = PhiConfig.from_hf_dict(hf)
    assert cfg.replace(name="") == PhiConfig.from_preset(preset).replace(name="")
    with torch.device("meta"):
        ours = PhiForCausalLM(cfg)
        theirs = transformers.Phi3ForCausalLM(transformers.Phi3Config(
            **{k: v for k, v in hf.items() if k not in ("auto_map", "architectures")}))
    assert sum(p.numel() for p in ours.parameters()) == size == param_count(cfg)["total"]
    assert sum(p.numel() for p in theirs.parameters()) == size


def test_vision_config_rope_su_reads_as_longrope():
    # Phi-3-vision's text tower names LongRoPE by its older name `su` (model_type phi3_v itself
    # is not a phi3 checkpoint); its rope settings read the same.
    src = data_path("tokenizers/phi-3-configs/Phi-3-vision-128k-instruct.json")
    if src is None:
        pytest.skip("data folder not available")
    hf = {**json.loads(src.read_text()), "model_type": "phi3"}
    cfg = PhiConfig.from_hf_dict(hf)
    assert cfg.rope_type == "longrope" and cfg.original_max_position_embeddings == 4096
    assert len(cfg.rope_long_factor) == 48 and cfg.rope_long_factor[0] == hf["rope_scaling"]["long_factor"][0]


def test_model_stage_on_the_128k_preset(tmp_path):
    # stage 04 on phi-3-mini-128k: sizes on meta, parity across the switch, samples decoded
    # with the preset's tokenizer (phi-3-mini, not codegen)
    from phi_lib.config import load
    from phi_lib.model.stage import ModelStage

    cfg = load({"model": {"preset": "phi-3-mini-128k", "gpus": 8, "sample_max_new_tokens": 4}})
    assert cfg.model.tokenizer == "phi-3-mini"
    stage = ModelStage(cfg, tmp_path)
    assert stage.params().data.loc["total", "parameters"] == 3_821_079_552
    summary = stage.summary()["value"]
    assert summary["rotary"] == "longrope (from 4096)" and summary["tokenizer"] == "phi-3-mini"
    report = stage.parity()
    assert report["max_abs_diff"] < TOL and report["longrope_short_max_abs_diff"] < TOL
    assert len(stage.samples()) == 2
    hf = json.loads((stage.write_config()).read_text())
    assert hf["rope_scaling"]["type"] == "longrope" and hf["original_max_position_embeddings"] == 4096
