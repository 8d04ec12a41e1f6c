"""The phi block of phi-1 / phi-1.5 / phi-2 (`arch="phi"`), names as transformers.PhiForCausalLM:

    h = LayerNorm(x)
    x = x + dropout(Attention(h)) + dropout(MLP(h))        # attention and MLP in parallel

Attention: separate q/k/v projections with biases, multi-head, rotary embedding on the first
`rotary_dim` dims of each head (32 of 64 for phi-1/1.5, 32 of 80 for phi-2), an output
`dense` projection. MLP: fc1 -> gelu (tanh approximation) -> fc2, with biases. The model
around the blocks (embeddings, final LayerNorm, LM head with bias) is in model.py.
"""
from __future__ import annotations

import torch.nn as nn

from phi_lib.model.activations import activation
from phi_lib.model.attention import AttentionContext, self_attention
from phi_lib.model.config import PhiConfig


class PhiAttention(nn.Module):
    def __init__(self, config: PhiConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        h, d, n_kv = config.hidden_size, config.head_dim, config.num_key_value_heads
        self.q_proj = nn.Linear(h, config.num_attention_heads * d)
        self.k_proj = nn.Linear(h, n_kv * d)
        self.v_proj = nn.Linear(h, n_kv * d)
        self.dense = nn.Linear(config.num_attention_heads * d, h)
        if config.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x, rope, ctx: AttentionContext):
        b, t, _ = x.shape
        d = self.config.head_dim
        q = self.q_proj(x).view(b, t, -1, d).transpose(1, 2)       # (B, H, T, D)
        k = self.k_proj(x).view(b, t, -1, d).transpose(1, 2)       # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        if self.config.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        return self.dense(self_attention(q, k, v, rope, ctx, self.layer_idx, self.config.sliding_window))


class PhiMLP(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    """Parallel block: attention and MLP read the same LayerNorm output."""

    def __init__(self, config: PhiConfig, layer_idx: int):
        super().__init__()
        self.self_attn = PhiAttention(config, layer_idx)
        self.mlp = PhiMLP(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, rope, ctx: AttentionContext):
        h = self.input_layernorm(x)
        return self.resid_dropout(self.self_attn(h, rope, ctx)) + self.resid_dropout(self.mlp(h)) + x
