"""The Phi-3 block (`arch="phi3"`: phi-3-mini 4K/128K, Phi-3.5-mini, phi-3-medium 4K/128K),
names as transformers.Phi3ForCausalLM. A Llama-like sequential block:

    x = x + dropout(Attention(RMSNorm(x)))
    x = x + dropout(SwiGLU(RMSNorm(x)))

Attention: one fused `qkv_proj` (no bias) holding the query heads, then the key heads, then
the value heads; grouped-query attention when there are fewer key/value heads than query
heads (medium: 40 query / 10 key-value heads of 128, each key/value head shared by 4 query
heads); full-head rotary embedding, plain RoPE or LongRoPE (rotary.py); a sliding window
when the config sets one (4K models: 2047). MLP: one fused `gate_up_proj` whose first half
is the gate and second half the up projection, `down(up * silu(gate))`. The model around the
blocks (embeddings, final RMSNorm, LM head without bias) is in model.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from phi_lib.model.activations import activation
from phi_lib.model.attention import AttentionContext, self_attention
from phi_lib.model.config import PhiConfig


class Phi3RMSNorm(nn.Module):
    """x / rms(x) * weight, the statistics in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Phi3Attention(nn.Module):
    def __init__(self, config: PhiConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, n_q, n_kv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        self.qkv_proj = nn.Linear(config.hidden_size, (n_q + 2 * n_kv) * d, bias=False)
        self.o_proj = nn.Linear(n_q * d, config.hidden_size, bias=False)

    def forward(self, x, rope, ctx: AttentionContext):
        b, t, _ = x.shape
        c = self.config
        d = c.head_dim
        q, k, v = self.qkv_proj(x).split(
            [c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d], dim=-1)
        q, k, v = (z.view(b, t, -1, d).transpose(1, 2) for z in (q, k, v))  # (B, H or Hkv, T, D)
        return self.o_proj(self_attention(q, k, v, rope, ctx, self.layer_idx, c.sliding_window))


class Phi3MLP(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)   # (B, T, I) each
        return self.down_proj(up * self.act(gate))


class Phi3DecoderLayer(nn.Module):
    """Sequential (Llama) block with RMSNorm."""

    def __init__(self, config: PhiConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Phi3Attention(config, layer_idx)
        self.mlp = Phi3MLP(config)
        self.input_layernorm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_mlp_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, rope, ctx: AttentionContext):
        x = x + self.resid_attn_dropout(self.self_attn(self.input_layernorm(x), rope, ctx))
        return x + self.resid_mlp_dropout(self.mlp(self.post_attention_layernorm(x)))
