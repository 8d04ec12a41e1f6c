"""Check our model against `transformers` (the independent reference) on shared weights.

    report = parity_check(PhiConfig.from_preset("phi-tiny"))
    report["max_abs_diff"]   # largest |logit difference| over the checked cases, fp32
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
    original context of `original_context` tokens, so a short test sequence crosses the switch."""
    kv = max(1, heads * config.num_key_value_heads // config.num_attention_heads)
    hidden = heads * config.head_dim
    ratio = config.intermediate_size / config.hidden_size
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
    """
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


def _meta_model(config: PhiConfig) -> PhiForCausalLM:
    with torch.device("meta"):
        return PhiForCausalLM(config)
