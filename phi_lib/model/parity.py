"""Check our model against `transformers` (the independent reference) on shared weights.

    report = parity_check(PhiConfig.from_preset("phi-tiny"))
    report["max_abs_diff"]   # largest |logit difference| over the checked cases, fp32

Phi-3-small has no transformers class (its reference is remote code, a test oracle only:
tests/test_phi3_small.py): stage 04 checks its two block-sparse kernels against each other
instead (`small_parity_check`: flex attention's block mask vs the masked SDPA path).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from phi_lib.model.config import PhiConfig
from phi_lib.model.model import PhiForCausalLM

PARITY_MAX_PARAMS = 60_000_000
"""Above this the parity check runs on a shrunken copy of the architecture (same head
geometry, rotary, block type; 2 layers) so that it stays CPU-seconds."""


def to_transformers(model: PhiForCausalLM, attn_implementation: str = "sdpa"):
    """The transformers PhiForCausalLM / Phi3ForCausalLM with our weights (shared config)."""
    import transformers

    hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in model.config.to_hf_dict().items()
                                                  if k != "architectures"})
    hf_cfg._attn_implementation = attn_implementation
    cls = transformers.PhiForCausalLM if model.config.arch == "phi" else transformers.Phi3ForCausalLM
    hf = cls(hf_cfg).to(model.dtype)
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.to(model.device).eval()


def shrink(config: PhiConfig, layers: int = 2, heads: int = 2, vocab: int = 4096,
           original_context: int = 16) -> PhiConfig:
    """The same architecture at test size: head dim, rotary fraction, block and grouped-query
    ratio kept. LongRoPE keeps its factors and its context ratio (32x for 4K -> 128K) over an
    original context of `original_context` tokens, so a short test sequence crosses the switch.
    Phi-3-small keeps its layer alternation (sparse, dense) and layout rule over blocks of 4
    tokens (2 local, every 3rd vertical), so a short sequence has sparse rows."""
    kv = max(1, heads * config.num_key_value_heads // config.num_attention_heads)
    hidden = heads * config.head_dim
    ratio = config.intermediate_size / config.hidden_size
    if config.arch == "phi3small":
        return config.replace(num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=kv, hidden_size=hidden,
                              ff_intermediate_size=int(ratio * hidden), ff_dim_multiplier=None,
                              vocab_size=min(vocab, config.vocab_size), blocksparse_block_size=4,
                              blocksparse_num_local_blocks=2, blocksparse_vert_stride=3,
                              bos_token_id=None, eos_token_id=None, pad_token_id=None)
    changes = {}
    if config.rope_type == "longrope":
        scale = config.max_position_embeddings // config.original_max_position_embeddings
        changes = dict(original_max_position_embeddings=original_context,
                       max_position_embeddings=original_context * scale)
    return config.replace(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                          hidden_size=hidden, intermediate_size=int(ratio * hidden),
                          vocab_size=min(vocab, config.vocab_size), bos_token_id=None,
                          eos_token_id=None, pad_token_id=None, **changes)


@torch.no_grad()
def parity_check(config: PhiConfig, *, batch: int = 2, seq_len: int = 24, seed: int = 0,
                 attn_implementation: str = "sdpa", device: str = "cpu") -> dict[str, Any]:
    """Max |logit difference| between ours and transformers on random weights, in fp32.

    Cases: plain causal forward; a left-padded batch (compared on real tokens); and
    incremental decoding with our KV cache against our own full forward. LongRoPE: the
    sequence passes the (shrunk) original context, and a prefix within it is checked too.
    A Phi3SmallConfig goes to `small_parity_check`.
    """
    if config.arch == "phi3small":
        return small_parity_check(config, batch=batch, seed=seed, device=device)
    n_params = sum(p.numel() for p in _meta_model(config).parameters())
    shrunk = n_params > PARITY_MAX_PARAMS
    cfg = shrink(config) if shrunk else config
    cfg = cfg.replace(attn_implementation=attn_implementation, resid_pdrop=0.0, embd_pdrop=0.0,
                      attention_dropout=0.0)
    torch.manual_seed(seed)
    ours = PhiForCausalLM(cfg).to(device).eval()
    _randomize(ours, seed)
    theirs = to_transformers(ours, "eager" if attn_implementation == "eager" else "sdpa")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[0, : seq_len // 3] = 0  # row 0 is left-padded

    plain = (ours(ids) - theirs(ids).logits).abs().max().item()
    real = mask.bool()
    padded = (ours(ids, attention_mask=mask) - theirs(ids, attention_mask=mask).logits)[real].abs().max().item()
    # a LongRoPE cache is prefilled past the switch (generation recomputes it there)
    prefix = cfg.original_max_position_embeddings + 1 if cfg.rope_type == "longrope" else None
    cache_diff = kv_cache_max_abs_diff(ours, ids, prefix=prefix)
    report = {}
    if cfg.rope_type == "longrope":  # ids pass original_max (long factors); a prefix stays within
        short = ids[:, :cfg.original_max_position_embeddings]
        report["longrope_short_max_abs_diff"] = (ours(short) - theirs(short).logits).abs().max().item()
        plain = max(plain, report["longrope_short_max_abs_diff"])
    return {**report, "max_abs_diff": max(plain, padded), "causal_max_abs_diff": plain,
            "padded_max_abs_diff": padded, "kv_cache_max_abs_diff": cache_diff,
            "arch": cfg.arch, "checked_params": sum(p.numel() for p in ours.parameters()),
            "shrunk": shrunk, "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size}


@torch.no_grad()
def small_parity_check(config, *, batch: int = 2, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Phi-3-small's block-sparse layers by its two kernels on random weights, fp32: flex
    attention over a BlockMask (the GPU path) against SDPA with the boolean mask (the CPU
    path). Also: a left-padded row equals the same row unpadded on its real tokens (the
    layout counts from the first real token), and KV-cache decoding equals the full forward.
    The sequence is long enough for the layout to drop key blocks (sparse rows exist)."""
    from phi_lib.model.phi3_small import Phi3SmallForCausalLM

    n_params = sum(p.numel() for p in _meta_model(config).parameters())
    shrunk = n_params > PARITY_MAX_PARAMS
    cfg = shrink(config) if shrunk else config
    cfg = cfg.replace(attn_implementation="sdpa", embedding_dropout_prob=0.0, ffn_dropout_prob=0.0,
                      attention_dropout_prob=0.0)
    seq_len = (cfg.blocksparse_num_local_blocks + cfg.blocksparse_vert_stride + 1) * cfg.blocksparse_block_size
    torch.manual_seed(seed)
    ours = Phi3SmallForCausalLM(cfg).to(device).eval()
    _randomize(ours, seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen).to(device)
    masked = ours(ids)
    other = Phi3SmallForCausalLM(cfg.replace(attn_implementation="flex")).to(device).eval()
    other.load_state_dict(ours.state_dict())  # the same weights, the other kernel
    flex = (other(ids) - masked).abs().max().item()
    pad = cfg.blocksparse_block_size + 3  # not a whole block: the layout must shift with it
    padded_ids = torch.cat([torch.zeros_like(ids[:1, :pad]), ids[:1]], dim=1)
    mask = torch.ones_like(padded_ids)
    mask[:, :pad] = 0
    padded = (ours(padded_ids, attention_mask=mask)[:, pad:] - masked[:1]).abs().max().item()
    cache_diff = kv_cache_max_abs_diff(ours, ids, prefix=seq_len - 8)  # 8 decoding steps
    return {"max_abs_diff": max(flex, padded), "flex_max_abs_diff": flex,
            "padded_max_abs_diff": padded, "kv_cache_max_abs_diff": cache_diff,
            "reference": "flex attention vs masked SDPA (no transformers class for phi3small)",
            "seq_len": seq_len, "arch": cfg.arch,
            "checked_params": sum(p.numel() for p in ours.parameters()), "shrunk": shrunk,
            "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size}


@torch.no_grad()
def kv_cache_max_abs_diff(model: PhiForCausalLM, ids: torch.Tensor, prefix: Optional[int] = None) -> float:
    """Prefill `prefix` tokens, then feed the rest one at a time: max |diff| to the full forward."""
    full = model(ids)
    prefix = prefix or ids.shape[1] // 2
    cache = model.new_cache(max_length=ids.shape[1])
    steps = [model(ids[:, :prefix], cache=cache)]
    for i in range(prefix, ids.shape[1]):
        steps.append(model(ids[:, i:i + 1], cache=cache))
    return (torch.cat(steps, dim=1) - full).abs().max().item()


def _randomize(model: PhiForCausalLM, seed: int) -> None:
    """Non-trivial norms and biases too (init leaves them at 1/0, which hides mistakes)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            base = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


def _meta_model(config: PhiConfig) -> torch.nn.Module:
    from phi_lib.model import build_model

    with torch.device("meta"):
        return build_model(config)
