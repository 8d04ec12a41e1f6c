"""The phi model in one file (nanoGPT style), with Hugging Face parameter names.

phi-1 / phi-1.5 / phi-2 (`arch="phi"`), per block:

    h = LayerNorm(x)
    x = x + dropout(Attention(h)) + dropout(MLP(h))        # attention and MLP in parallel

Attention has biases and rotary embedding on the first 32 dims of each head; the MLP is
fc1 -> gelu(tanh) -> fc2. A final LayerNorm, then an untied LM head with bias.

phi-3 (`arch="phi3"`) is the Llama block: x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)),
full rotary, fused qkv and gate_up projections, no biases.

Module names equal `transformers.PhiForCausalLM` / `Phi3ForCausalLM`, so `state_dict()` is a
Hugging Face checkpoint (see checkpoint.py) and logits match theirs to fp32 round-off
(tests/test_model_parity.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from phi_lib.model.attention import (attend, build_mask, cu_seqlens_from_document_ids,
                                     pick_implementation, positions_from_document_ids)
from phi_lib.model.cache import KVCache
from phi_lib.model.config import PhiConfig


# ----------------------------------------------------------------------------- rotary
class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embedding, computed in fp32 once per device.

    Not a buffer: `model.half()` would round the frequencies (and they are not in checkpoints).
    """

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.dim = config.rotary_dim
        self.base = config.rope_theta
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._len = config.max_position_embeddings

    def _table(self, device: torch.device, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables.get(device)
        if cached is None or cached[0].shape[0] < needed:
            n = max(needed, self._len)
            inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float) / self.dim))
            freqs = torch.arange(n, dtype=torch.float)[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cached = self._tables[device] = (emb.cos().to(device), emb.sin().to(device))
        return cached

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype,
                needed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (B or 1, T, rotary_dim), for integer positions (B or 1, T).

        `needed` (one past the largest position) is known to the caller in the usual case;
        otherwise it is read from the tensor on CPU, and taken as the context length on GPU
        (reading it there would synchronize every step).
        """
        if needed is None:
            needed = int(position_ids.max()) + 1 if position_ids.device.type == "cpu" else self._len
        cos, sin = self._table(position_ids.device, needed)
        return cos[position_ids].to(dtype), sin[position_ids].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of each head of x (B, H, T, D); pass the rest through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    x_rot = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


# ----------------------------------------------------------------------------- phi block
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

    def forward(self, x, rope, ctx: "_Context"):
        b, t, _ = x.shape
        d = self.config.head_dim
        q = self.q_proj(x).view(b, t, -1, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        if self.config.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        return self.dense(_attention(q, k, v, rope, ctx, self.layer_idx, self.config))


class PhiMLP(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)

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

    def forward(self, x, rope, ctx: "_Context"):
        h = self.input_layernorm(x)
        return self.resid_dropout(self.self_attn(h, rope, ctx)) + self.resid_dropout(self.mlp(h)) + x


# ----------------------------------------------------------------------------- phi-3 block
class Phi3RMSNorm(nn.Module):
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

    def forward(self, x, rope, ctx: "_Context"):
        b, t, _ = x.shape
        c = self.config
        d = c.head_dim
        q, k, v = self.qkv_proj(x).split(
            [c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d], dim=-1)
        q, k, v = (z.view(b, t, -1, d).transpose(1, 2) for z in (q, k, v))
        return self.o_proj(_attention(q, k, v, rope, ctx, self.layer_idx, c))


class Phi3MLP(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = _activation(config.hidden_act)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
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

    def forward(self, x, rope, ctx: "_Context"):
        x = x + self.resid_attn_dropout(self.self_attn(self.input_layernorm(x), rope, ctx))
        return x + self.resid_mlp_dropout(self.mlp(self.post_attention_layernorm(x)))


# ----------------------------------------------------------------------------- shared pieces
class _Context:
    """What every layer's attention needs for one forward call."""

    def __init__(self, impl: str, mask, cache: Optional[KVCache], dropout_p: float,
                 cu_seqlens=None, max_seqlen: int = 0):
        self.impl, self.mask, self.cache, self.dropout_p = impl, mask, cache, dropout_p
        self.cu_seqlens, self.max_seqlen = cu_seqlens, max_seqlen


def _attention(q, k, v, rope, ctx: _Context, layer_idx: int, config: PhiConfig) -> torch.Tensor:
    """Rotary, cache, kernel; returns (B, T, H*D)."""
    cos, sin = rope
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if ctx.cache is not None:
        k, v = ctx.cache.update(layer_idx, k, v)
    out = attend(q, k, v, ctx.mask, impl=ctx.impl, dropout_p=ctx.dropout_p,
                 sliding_window=config.sliding_window, cu_seqlens=ctx.cu_seqlens,
                 max_seqlen=ctx.max_seqlen)
    b, _, t, _ = out.shape
    return out.transpose(1, 2).reshape(b, t, -1)


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        # the tanh approximation in one fused kernel (transformers spells it out in 6 ops)
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "silu":
        return F.silu
    raise ValueError(f"hidden_act {name!r} is not supported (gelu_new, gelu, silu)")


# ----------------------------------------------------------------------------- the model
class PhiModel(nn.Module):
    """Embeddings, blocks and the final norm (the `model.` prefix of the checkpoint)."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        block = PhiDecoderLayer if config.arch == "phi" else Phi3DecoderLayer
        self.layers = nn.ModuleList(block(config, i) for i in range(config.num_hidden_layers))
        if config.arch == "phi":
            self.embed_dropout = nn.Dropout(config.embd_pdrop)
            self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:  # transformers' Phi3Model applies no embedding dropout
            self.embed_dropout = nn.Identity()
            self.norm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def final_norm(self, x):
        return self.final_layernorm(x) if self.config.arch == "phi" else self.norm(x)


class PhiForCausalLM(nn.Module):
    """A phi language model: `model(input_ids) -> logits (B, T, vocab)`."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.model = PhiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.arch == "phi")
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                document_ids: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab) (fp32 math happens in the caller's loss).

        attention_mask: (B, past + T), 1 = token, 0 = padding (transformers convention).
        position_ids:   (B, T) rotary positions; default past..past+T-1, or restarting per
                        document when `document_ids` is given.
        document_ids:   (B, T) packed-sequence document index: attention stays within a
                        document (see `attention.document_ids_from_eos`).
        cache:          a `KVCache`, extended in place (generation).
        logits_to_keep: only the last N positions get logits (0 = all); generation uses 1.
        """
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        m = self.model
        x = m.embed_dropout(m.embed_tokens(input_ids))
        needed = None
        if position_ids is None:
            needed = past + t
            if document_ids is not None:
                position_ids = positions_from_document_ids(document_ids)
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device)[None]
        rope = m.rotary_emb(position_ids, x.dtype, needed)
        ctx = self._context(x, t, past, attention_mask, document_ids, cache)
        for layer in m.layers:
            if m.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, rope, ctx, use_reentrant=False)
            else:
                x = layer(x, rope, ctx)
        x = m.final_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if cache is not None:
            cache.advance(t)
        return self.lm_head(x)

    def _context(self, x, t, past, attention_mask, document_ids, cache) -> _Context:
        impl = pick_implementation(self.config.attn_implementation, x)
        dropout_p = self.config.attention_dropout if self.training else 0.0
        if attention_mask is not None:
            if attention_mask.shape != (x.shape[0], past + t):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                                 f"(batch, past + new) = {(x.shape[0], past + t)}")
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: the fused causal kernels apply
        if document_ids is not None and past:
            raise ValueError("document_ids (packed sequences) cannot be combined with a KV cache")
        if impl == "flash_attention_2" and document_ids is not None and attention_mask is None:
            cu, longest = cu_seqlens_from_document_ids(document_ids)
            return _Context(impl, None, cache, dropout_p, cu, longest)
        mask = build_mask(t, past + t, x.device, key_padding=attention_mask,
                          document_ids=document_ids, sliding_window=self.config.sliding_window)
        return _Context(impl, mask, cache, dropout_p)

    # ------------------------------------------------------------------ conveniences
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if exclude_embeddings else n

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (activation memory ~ one block)."""
        self.model.gradient_checkpointing = enable

    def new_cache(self, max_length: Optional[int] = None) -> KVCache:
        return KVCache(self.config.num_hidden_layers, max_length=max_length)

    def generate(self, input_ids, attention_mask=None, **kwargs: Any) -> torch.Tensor:
        """Sampled or greedy continuation with a KV cache; see `phi_lib.model.generate.generate`."""
        from phi_lib.model.generate import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    def save_pretrained(self, directory: Union[str, Path], **kwargs: Any) -> Path:
        """Write a Hugging Face checkpoint (config.json + model.safetensors)."""
        from phi_lib.model.checkpoint import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_dir: Union[str, Path], **kwargs: Any) -> "PhiForCausalLM":
        """Load a Hugging Face phi/phi3 checkpoint: a local dir (ours or transformers') or a hub name."""
        from phi_lib.model.checkpoint import from_pretrained

        return from_pretrained(cls, name_or_dir, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PhiForCausalLM":
        return cls(PhiConfig.from_preset(name, **overrides))

