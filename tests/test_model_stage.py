"""Stage 04: the library object behind the notebook (unit), and the notebook in the smoke run."""
import json

import pytest
import torch

from phi_lib.config import load
from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.stage import ModelStage


@pytest.mark.unit
def test_model_stage_on_a_large_preset(tmp_path):
    cfg = load({"model": {"preset": "phi-2", "gpus": 8, "plan_micro_batch_size": 4,
                          "sample_max_new_tokens": 4}})
    stage = ModelStage(cfg, tmp_path)
    assert stage.build().lm_head.weight.is_meta  # sizing needs no weights
    assert stage.summary().loc["layers", "value"] == "32"
    assert stage.params().data.loc["total", "parameters"] == 2_779_683_840
    mem = stage.memory()
    assert list(mem.index) == [(z, p) for z in range(4) for p in ("fp16", "bf16")]
    assert mem.loc[(0, "fp16"), "total"] > mem.loc[(3, "fp16"), "total"]
    report = stage.parity()
    assert report["shrunk"] and report["max_abs_diff"] < 1e-5
    samples = stage.samples()
    assert len(samples) == 2 and "(shrunk)" in samples["model"][0]
    manifest = stage.write_manifest()
    assert manifest["metrics"]["params"] == 2_779_683_840
    assert manifest["metrics"]["parity_max_abs_diff"] < 1e-5
    assert manifest["metrics"]["memory_gb/zero3"] == mem.loc[(3, "fp16"), "total"]
    assert manifest["counts"]["params/total"] == 2_779_683_840 and len(manifest["samples"]) == 2
    assert set(manifest["timings"]) == {"parity", "samples"}
    assert (tmp_path / "memory.png").is_file() and manifest["figures"] == ["memory.png"]
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == "phi" and hf["partial_rotary_factor"] == 0.4
    # a new kernel on the same folder: parity and samples are reused while current
    again = ModelStage(cfg, tmp_path)
    mtime = (tmp_path / ".steps" / "parity.json").stat().st_mtime_ns
    assert again.parity() == report and (tmp_path / ".steps" / "parity.json").stat().st_mtime_ns == mtime
    assert again.samples().equals(samples)
    cfg.model.sample_max_new_tokens = 2  # what the samples step's fingerprint holds: redone
    assert ModelStage(cfg, tmp_path).samples()["completion"].tolist() != samples["completion"].tolist()


@pytest.mark.notebooks
def test_model_notebook_in_smoke_run(smoke_run):
    from transformers import AutoConfig

    out = smoke_run.cfg.run_dir / "04_model"
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["parity_max_abs_diff"] < 1e-5 and m["kv_cache_max_abs_diff"] < 1e-5
    hf_cfg = AutoConfig.from_pretrained(out)  # transformers reads our config.json
    assert hf_cfg.model_type == "phi" and hf_cfg.num_hidden_layers == 4
    ours = PhiConfig.from_hf_dict(json.loads((out / "config.json").read_text()))
    with torch.device("meta"):
        n = sum(p.numel() for p in PhiForCausalLM(ours).parameters())
    assert n == m["params"]
    assert (out / "memory.png").is_file() and manifest["samples"]


@pytest.mark.slow
def test_model_knob_reruns_the_stage_operational_knob_skips(smoke_copy):
    """Through the runner on a copy of the smoke run: the sample length (operational) changes
    nothing; a layer count reruns stage 04, every step records the new fingerprint, config.json
    is the new architecture and training (stage 05) is stale."""
    from phi_lib.stages import STAGES

    out = smoke_copy.run_dir / "04_model"
    steps = out / ".steps"
    mtimes = {p.name: p.stat().st_mtime_ns for p in steps.glob("*.json")}
    before = json.loads((out / "config.json").read_text())
    params_before = json.loads((out / "manifest.json").read_text())["metrics"]["params"]
    res = smoke_copy(["04"], {"model.sample_max_new_tokens": 4})
    assert [s.status for s in res.statuses if s.stage == "04"] == ["skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in steps.glob("*.json")} == mtimes
    assert set(mtimes) == {f"{s}.json" for s in ("summary", "params", "flops", "memory", "parity", "samples")}

    res = smoke_copy(["04"], {"model.num_hidden_layers": before["num_hidden_layers"] - 2})
    assert [s.status for s in res.statuses if s.stage == "04"] == ["done"]
    hf = json.loads((out / "config.json").read_text())
    assert hf["num_hidden_layers"] == before["num_hidden_layers"] - 2
    assert {k: v for k, v in hf.items() if k != "num_hidden_layers"} == \
        {k: v for k, v in before.items() if k != "num_hidden_layers"}
    with torch.device("meta"):
        n = sum(p.numel() for p in PhiForCausalLM(PhiConfig.from_hf_dict(hf)).parameters())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["params"] == n < params_before
    assert manifest["fingerprint"]["key"] == STAGES["04"].fingerprint(res.cfg).key
    for p in steps.glob("*.json"):  # no step's numbers come from the old architecture
        stats = json.loads(p.read_text())
        assert stats["fingerprint"]["config"]["model"]["num_hidden_layers"] == hf["num_hidden_layers"], p.name
        assert p.stat().st_mtime_ns != mtimes[p.name], p.name
    assert {s["model"] for s in manifest["samples"]} == {f"{hf['num_hidden_layers']} layers"}
    assert "inputs.04_model" in STAGES["05"].stale_reasons(res.cfg)
