"""Our model against transformers.PhiForCausalLM / Phi3ForCausalLM on shared random weights."""
import pytest
import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.attention import document_ids_from_eos
from phi_lib.model.parity import kv_cache_max_abs_diff, parity_check, shrink, to_transformers

pytestmark = pytest.mark.unit
TOL = 1e-5


def small(preset: str, **kw) -> PhiConfig:
    return shrink(PhiConfig.from_preset(preset), vocab=512).replace(**kw)


def pair(cfg: PhiConfig, seed: int = 0):
    torch.manual_seed(seed)
    ours = PhiForCausalLM(cfg).eval()
    with torch.no_grad():  # norms and biases away from 1/0 so a mix-up shows
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return ours, to_transformers(ours)


def batch(cfg, b=3, t=19, pad=(0, 6, 11)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for row, n in enumerate(pad[:b]):
        mask[row, :n] = 0
    return ids, mask


CASES = {
    "phi-1.5": small("phi-1.5"),
    "phi-2 (rotary 32 of 80)": small("phi-2"),
    "phi qk_layernorm": small("phi-1.5", qk_layernorm=True),
    "phi-3-mini": small("phi-3-mini", sliding_window=None),
    "phi-3 sliding window": small("phi-3-mini", sliding_window=6),
    "phi-3 GQA": small("phi-3-mini", num_attention_heads=4, num_key_value_heads=2, hidden_size=384,
                       intermediate_size=1024, sliding_window=None),
}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_logits_match_transformers(name, impl):
    cfg = CASES[name].replace(attn_implementation=impl)
    ours, theirs = pair(cfg)
    ids, mask = batch(cfg)
    assert (ours(ids) - theirs(ids).logits).abs().max().item() < TOL
    real = mask.bool()
    diff = (ours(ids, attention_mask=mask) - theirs(ids, attention_mask=mask).logits)[real]
    assert diff.abs().max().item() < TOL
    assert torch.isfinite(ours(ids, attention_mask=mask)).all()  # padded rows stay finite


@pytest.mark.parametrize("name", ["phi-1.5", "phi-3-mini", "phi-3 sliding window"])
@torch.no_grad()
def test_kv_cache_incremental_equals_full_forward(name):
    ours, _ = pair(CASES[name])
    ids, _ = batch(CASES[name], t=21)
    assert kv_cache_max_abs_diff(ours, ids, prefix=5) < TOL
    assert kv_cache_max_abs_diff(ours, ids, prefix=1) < TOL


@torch.no_grad()
def test_kv_cache_with_left_padding_matches_transformers_cache():
    cfg = CASES["phi-1.5"]
    ours, theirs = pair(cfg)
    ids, mask = batch(cfg, t=12)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = ours.new_cache(max_length=14)
    a = ours(ids, attention_mask=mask, position_ids=pos, cache=cache)[:, -1]
    b = theirs(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert (a - b).abs().max() < TOL
    nxt = torch.tensor([[3], [4], [5]])
    mask2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    a = ours(nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1, cache=cache)[:, -1]
    full = torch.cat([ids, nxt], 1)
    b = theirs(full, attention_mask=mask2, position_ids=(mask2.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    assert (a - b).abs().max() < TOL


@torch.no_grad()
def test_greedy_generation_matches_transformers_generate():
    cfg = CASES["phi-1.5"].replace(eos_token_id=None)
    ours, theirs = pair(cfg)
    ids, mask = batch(cfg, t=9, pad=(0, 3, 5))
    mine = ours.generate(ids, mask, max_new_tokens=12, temperature=0.0, eos_token_id=None)
    ref = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    assert torch.equal(mine, ref)


@torch.no_grad()
def test_document_masking_equals_separate_forwards():
    cfg = CASES["phi-1.5"]
    ours, _ = pair(cfg)
    eos = 7
    a, b = torch.randint(8, cfg.vocab_size, (1, 6)), torch.randint(8, cfg.vocab_size, (1, 9))
    a[0, -1] = eos
    packed = torch.cat([a, b], 1)
    docs = document_ids_from_eos(packed, eos)
    assert docs.tolist() == [[0] * 6 + [1] * 9]
    out = ours(packed, document_ids=docs)
    assert (out[:, :6] - ours(a)).abs().max() < TOL
    assert (out[:, 6:] - ours(b)).abs().max() < TOL  # positions restart, no attention across


def test_parity_check_library_function():
    report = parity_check(PhiConfig.from_preset("phi-2"))  # shrunk automatically
    assert report["shrunk"] and report["arch"] == "phi"
    assert report["max_abs_diff"] < TOL and report["kv_cache_max_abs_diff"] < TOL


def test_training_mode_grads_match_transformers():
    cfg = CASES["phi-1.5"]
    ours, theirs = pair(cfg)
    ids, _ = batch(cfg)
    for m in (ours, theirs):
        m.train()
        logits = m(ids) if m is ours else m(ids).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    g_ours = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert (g_ours[name].grad - p.grad).abs().max() < 1e-5, name


def test_gradient_checkpointing_same_grads():
    cfg = CASES["phi-3-mini"]
    ours, _ = pair(cfg)
    ids, _ = batch(cfg)
    grads = []
    for ckpt in (False, True):
        ours.zero_grad()
        ours.train().gradient_checkpointing_enable(ckpt)
        ours(ids).float().logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-6


def test_fp16_attention_does_not_overflow():
    # q.k of 64 dims at |x| = 200 is 2.6M: far past fp16's 65504. A naive fp16 matmul gives inf.
    from phi_lib.model.attention import attend

    q = torch.full((1, 1, 4, 64), 200.0, dtype=torch.float16)
    k = q.clone()
    v = torch.randn(1, 1, 4, 64).half()
    assert torch.isinf(q @ k.transpose(-1, -2)).any()
    for impl in ("eager", "sdpa"):
        out = attend(q, k, v, None, impl=impl)
        assert out.dtype == torch.float16 and torch.isfinite(out).all(), impl


def test_dropout_only_in_training():
    cfg = CASES["phi-1.5"].replace(resid_pdrop=0.5, embd_pdrop=0.5, attention_dropout=0.5)
    ours, _ = pair(cfg)
    ids, _ = batch(cfg)
    with torch.no_grad():
        assert torch.equal(ours.eval()(ids), ours(ids))
        ours.train()
        assert not torch.equal(ours(ids), ours(ids))
