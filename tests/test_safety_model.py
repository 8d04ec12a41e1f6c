"""Stage 07 on real models: a tiny phi model trained on the benign statements of two groups
scores higher (safer) than the same model trained on their toxic statements; perplexities
resume per group; probe completions resume without duplicates."""
import json

import pytest
import torch
import torch.nn.functional as F

from phi_lib.config import load
from phi_lib.paths import resolve
from phi_lib.safety import probes, toxigen
from phi_lib.safety.stage import ToxicityStage

pytestmark = pytest.mark.slow
GROUPS = ["women", "muslim"]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve("tokenizers/codegen-350M-mono")))


def _train(texts, folder, steps=8):
    """phi-tiny from scratch, a few steps on `texts` (EOS first, as the rolling score
    conditions on it); returns the first and last training losses."""
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.checkpoint import save_pretrained

    torch.manual_seed(0)
    tok = _tokenizer()
    model = PhiForCausalLM(PhiConfig.from_preset("phi-tiny"))
    ids = [[tok.eos_token_id] + tok.encode(t) for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in ids])
    labels = torch.tensor([x + [-100] * (width - len(x)) for x in ids])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    losses = []
    for _ in range(steps):
        logits = model(batch)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save_pretrained(model.eval(), folder)
    return losses[0], losses[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety_models")
    stm = toxigen.sample_statements(GROUPS, per_group=None, seed=0)
    for label in ("benign", "toxic"):
        first, last = _train([s["text"] for s in stm if s["label"] == label], root / label)
        assert last < first - 2  # it learnt its statements
    return root


def _cfg(tmp_path, models, **tox):
    return load("params/smoke.yaml", {
        "run.output_root": str(tmp_path), "toxicity.models": models,
        "toxicity.groups": GROUPS, "toxicity.per_group": None, **tox})


def test_model_that_prefers_benign_text_scores_higher(trained, tmp_path):
    benign, toxic = str(trained / "benign"), str(trained / "toxic")
    cfg = _cfg(tmp_path, [benign, toxic], **{"toxicity.device": "cpu"})
    out = tmp_path / "07"
    st = ToxicityStage(cfg, out)
    st.toxigen_scores(progress=False)
    scores = st.scores()
    for g in GROUPS:
        assert scores[benign][g].score > 0.9 and scores[benign][g].significant
        assert scores[toxic][g].score < 0.1 and scores[toxic][g].significant
        assert scores[benign][g].mean_nll_benign < scores[benign][g].mean_nll_toxic

    # resume: a second call reads the per-group files and loads no model
    import phi_lib.hf_models as hf

    def no_load(*a, **k):
        raise AssertionError("a finished group was scored again")

    orig, hf.load_causal_lm = hf.load_causal_lm, no_load
    try:
        ToxicityStage(cfg, out).toxigen_scores(progress=False)
        again = st.scores()
    finally:
        hf.load_causal_lm = orig
    assert {m: {g: s.score for g, s in v.items()} for m, v in again.items()} == \
           {m: {g: s.score for g, s in v.items()} for m, v in scores.items()}

    # a torn cache file is counted and that group alone is rescored
    cached = next((out / "toxigen").glob("*benign/women.jsonl"))
    cached.write_text(cached.read_text()[:-40])
    loads = []
    hf.load_causal_lm = lambda *a, **k: loads.append(1) or orig(*a, **k)
    try:
        ToxicityStage(cfg, out).toxigen_scores(progress=False)
        third = st.scores()
    finally:
        hf.load_causal_lm = orig
    assert len(loads) == 1 and third[benign]["women"].score == scores[benign]["women"].score
    rec = json.loads(cached.read_text().splitlines()[0])
    assert {"group", "label", "text", "loglik", "n_tokens", "ppl", "fingerprint"} <= set(rec)


def test_completions_resume_without_duplicates(trained, tmp_path):
    from phi_lib.backends import get_backend
    from phi_lib.config import BackendConfig, SamplingConfig

    cfg = _cfg(tmp_path, [str(trained / "benign")])
    prompts = probes.select_prompts(probes.load_prompts(), 3)
    params = SamplingConfig(max_new_tokens=8, temperature=0.0, stop=["\n\n"])
    folder = tmp_path / "completions"
    bc = BackendConfig(model=str(trained / "benign"), cache=False, device="cpu")
    with get_backend(bc, run_dir=cfg.run_dir) as backend:
        first = probes.complete(backend, "benign", prompts[:2], params, folder, progress=False)
        calls = []
        gen = backend.generate
        backend.generate = lambda ps, *a, **k: calls.append(list(ps)) or gen(ps, *a, **k)
        all3 = probes.complete(backend, "benign", prompts, params, folder, progress=False)
    assert calls == [[prompts[2]["prompt"]]]  # only the missing prompt was completed
    assert all3[:2] == first and [c["id"] for c in all3] == [p["id"] for p in prompts]
    assert all(c["completion_tokens"] <= 8 and c["finish_reason"] in ("stop", "length") for c in all3)
    lines = [json.loads(l) for f in folder.glob("completions-*.jsonl") for l in f.read_text().splitlines()]
    assert len(lines) == 3 and len({l["id"] for l in lines}) == 3
