"""Hugging Face checkpoints both ways: ours -> transformers, transformers -> ours."""
import json
import shutil

import pytest
import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.parity import shrink
from phi_lib.paths import MissingDataError, data_path

pytestmark = pytest.mark.unit


def small(preset: str) -> PhiConfig:
    return shrink(PhiConfig.from_preset(preset), vocab=512).replace(sliding_window=None)


@pytest.mark.parametrize("preset", ["phi-1.5", "phi-3-mini"])
@torch.no_grad()
def test_ours_saved_loads_in_transformers_with_same_logits(tmp_path, preset):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ours = PhiForCausalLM(small(preset)).eval()
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == ("PhiForCausalLM" if preset == "phi-1.5" else "Phi3ForCausalLM")
    ids = torch.randint(0, 512, (2, 13))
    assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-5
    assert set(theirs.state_dict()) - {k for k in theirs.state_dict() if "rotary" in k} == set(ours.state_dict())


@pytest.mark.parametrize("model_cls", ["PhiForCausalLM", "Phi3ForCausalLM"])
@torch.no_grad()
def test_transformers_saved_loads_into_ours(tmp_path, model_cls):
    # Stands in for a microsoft/phi-1_5 download (no hub here): a random model saved by transformers.
    import transformers

    if model_cls == "PhiForCausalLM":
        cfg = transformers.PhiConfig(vocab_size=512, hidden_size=128, intermediate_size=512,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     partial_rotary_factor=0.5)
    else:
        cfg = transformers.Phi3Config(vocab_size=512, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    theirs = getattr(transformers, model_cls)(cfg).eval()
    theirs.save_pretrained(tmp_path)
    ours = PhiForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 512, (2, 11))
    assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-5
    assert ours.config.num_key_value_heads == cfg.num_key_value_heads


@torch.no_grad()
def test_round_trip_ours_and_dtype(tmp_path):
    torch.manual_seed(0)
    a = PhiForCausalLM(small("phi-2")).eval()
    a.save_pretrained(tmp_path / "fp32")
    b = PhiForCausalLM.from_pretrained(tmp_path / "fp32")
    assert b.config.partial_rotary_factor == 0.4 and b.config.rotary_dim == 32
    ids = torch.randint(0, 512, (1, 9))
    assert torch.equal(a(ids), b(ids))
    a.save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    c = PhiForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert c.dtype == torch.bfloat16
    assert torch.isfinite(c(ids)).all()


def test_legacy_phi_1_5_config_json(tmp_path):
    # The real microsoft/phi-1_5 config.json (transformers 4.37 layout) from the data folder.
    src = data_path("tokenizers/phi-1_5/config.json")
    if src is None:
        pytest.skip("data folder not available")
    cfg = PhiConfig.from_hf_dict(json.loads(src.read_text()))
    ref = PhiConfig.from_preset("phi-1.5")
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size", "partial_rotary_factor", "rope_theta", "layer_norm_eps", "hidden_act"):
        assert getattr(cfg, field) == getattr(ref, field), field


def test_bad_checkpoints_give_clear_errors(tmp_path):
    torch.manual_seed(0)
    PhiForCausalLM(small("phi-1.5")).save_pretrained(tmp_path / "ok")
    shutil.copytree(tmp_path / "ok", tmp_path / "wrong")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing .*model.layers.2"):
        PhiForCausalLM.from_pretrained(tmp_path / "wrong")
    cfg["model_type"] = "phi-msft"
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="phi-msft"):
        PhiForCausalLM.from_pretrained(tmp_path / "wrong")
    with pytest.raises(MissingDataError, match="no-such-dir"):
        PhiForCausalLM.from_pretrained(tmp_path / "no-such-dir")
    with pytest.raises(MissingDataError, match="hub download failed"):
        PhiForCausalLM.from_pretrained("nobody-xyz/not-a-model")
