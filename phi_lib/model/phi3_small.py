"""Phi-3-small (7B) in one file (nanoGPT style), with the checkpoint's parameter names.

Not in transformers: Microsoft shipped it as remote code (`model_type` `phi3small`). Per block

    x = x + Attention(LayerNorm(x))          # fused query_key_value, grouped-query, biases
    x = x + dropout(MLP(LayerNorm(x)))       # up_proj -> GEGELU -> down_proj, biases

with muP scaling: embeddings times `mup_embedding_multiplier`, attention scores times
`mup_attn_multiplier / head_dim` (not 1/sqrt(head_dim)), logits divided by
`mup_width_multiplier`. The LM head is tied to the embedding, and the logits of the
tokenizer's unused (dummy) ids are set to the dtype's minimum.

Every `dense_attention_every_n_layers`-th layer attends densely (causal); the others are
block-sparse: with blocks of `blocksparse_block_size` tokens, a query block sees its
`blocksparse_num_local_blocks` nearest key blocks (itself included) and every key block k with
(k + 1 + head offset) % `blocksparse_vert_stride` == 0, the offset growing with the head so
that different heads keep different vertical blocks. Positions count from each sequence's first real token
(a left-padded row's layout starts after its padding, as the reference kernel does).

One rule (`_layout_rule`) gives both attention paths: a boolean mask for SDPA (any device;
what the CPU runs) and a flex-attention `BlockMask` (GPU: key blocks outside the layout are
skipped, not masked). tests/test_phi3_small.py checks both against the reference
implementation (the remote code, with its kernels replaced by plain PyTorch in the test).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from phi_lib.model.attention import attend, build_mask, pick_implementation, positions_from_document_ids
from phi_lib.model.cache import KVCache
from phi_lib.model.model import CausalLM
from phi_lib.model.phi3_small_config import (  # noqa: F401 - re-exported
    IMPLEMENTATIONS, MODEL_TYPE, PHI3_SMALL_DUMMY_IDS, PRESETS, Phi3SmallConfig)
from phi_lib.model.rotary import RotaryEmbedding, apply_rotary


# ----------------------------------------------------------------------------- block-sparse rule
def _layout_rule(q_block, k_block, head, config: Phi3SmallConfig):
    """May query block `q_block` see key block `k_block` in `head`? (tensors, broadcasting)."""
    n_heads, stride = config.num_attention_heads, config.blocksparse_vert_stride
    # vertical blocks shift by one per head (by stride // heads when heads are fewer than the stride)
    offset = 0 if config.blocksparse_homo_head_pattern else head * max(1, stride // n_heads)
    vertical = (k_block + offset + 1) % stride == 0
    local = q_block - k_block < config.blocksparse_num_local_blocks
    return (k_block <= q_block) & (local | vertical)


def block_layout(config: Phi3SmallConfig, n_blocks: int, device=None) -> torch.Tensor:
    """(heads, n_blocks, n_blocks) bool: which key blocks each query block sees, per head."""
    blocks = torch.arange(n_blocks, device=device)
    heads = torch.arange(config.num_attention_heads, device=device)
    return _layout_rule(blocks[None, :, None], blocks[None, None, :], heads[:, None, None], config)


def sparse_mask_mod(config: Phi3SmallConfig, positions: torch.Tensor, tq: int,
                    key_padding: Optional[torch.Tensor] = None,
                    document_ids: Optional[torch.Tensor] = None):
    """The block-sparse mask of one forward call, as a flex-attention `mask_mod(b, h, q, kv)`.

    `positions` (B or 1, Tk) place every key in the layout (the queries are the last Tq keys);
    on top of the layout: causal, `key_padding` (B, Tk) 1 = token, and same-document only.
    """
    tk = positions.shape[1]
    blocks = positions.div(config.blocksparse_block_size, rounding_mode="floor")
    pad = key_padding.bool() if key_padding is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        q_abs = q_idx + (tk - tq)  # the query's index among the keys
        ok = _layout_rule(blocks[b, q_abs], blocks[b, kv_idx], h, config) & (kv_idx <= q_abs)
        if pad is not None:
            ok = ok & pad[b, kv_idx]
        if document_ids is not None:
            ok = ok & (document_ids[b, q_abs] == document_ids[b, kv_idx])
        return ok | (kv_idx == q_abs)  # a padding query sees itself: finite softmax, output unused

    return mask_mod


def dense_mask(mask_mod, batch: int, heads: int, tq: int, tk: int, device) -> torch.Tensor:
    """(batch, heads, Tq, Tk) bool of a mask_mod, by broadcasting (for SDPA)."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.arange(heads, device=device)[None, :, None, None]
    q = torch.arange(tq, device=device)[None, None, :, None]
    kv = torch.arange(tk, device=device)[None, None, None, :]
    return mask_mod(b, h, q, kv)


def block_mask(mask_mod, batch: int, config: Phi3SmallConfig, tq: int, tk: int, device):
    """A flex-attention BlockMask: a tile (flex's default, 128 x 128 tokens) none of whose
    layout blocks is seen is skipped, not computed; the others apply mask_mod inside."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, batch if batch > 1 else None, config.num_attention_heads,
                             tq, tk, device=device, _compile=device.type == "cuda")


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q, k, v, block_mask, scale: float) -> torch.Tensor:
    """flex attention (compiled on CUDA; the unfused reference implementation elsewhere)."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


# ----------------------------------------------------------------------------- the block
def gegelu(x: torch.Tensor, limit: Optional[float]) -> torch.Tensor:
    """up_proj's outputs interleave gelu and linear units: quick_gelu(even) * (odd + 1)."""
    gelu, linear = x[..., ::2], x[..., 1::2]
    if limit is not None:  # clamp for stability, but let infinities through as the reference does
        gelu = torch.where(torch.isinf(gelu), gelu, gelu.clamp(max=limit))
        linear = torch.where(torch.isinf(linear), linear, linear.clamp(-limit, limit))
    return gelu * torch.sigmoid(1.702 * gelu) * (linear + 1)


class Phi3SmallAttention(nn.Module):
    def __init__(self, config: Phi3SmallConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.sparse = not config.is_dense_layer(layer_idx)
        d, n_q, n_kv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        self.query_key_value = nn.Linear(config.hidden_size, (n_q + 2 * n_kv) * d)
        self.dense = nn.Linear(n_q * d, config.hidden_size)

    def forward(self, x, rope, ctx: "_Context"):
        b, t, _ = x.shape
        c = self.config
        groups, per_group = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads
        # fused outputs are grouped per key/value head: [q_0 .. q_{m-1}, k, v] for each group
        qkv = self.query_key_value(x).view(b, t, groups, per_group + 2, c.head_dim)
        q = qkv[:, :, :, :per_group].reshape(b, t, -1, c.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = qkv[:, :, :, per_group].transpose(1, 2)                                 # (B, nkv, T, hs)
        v = qkv[:, :, :, per_group + 1].transpose(1, 2)                             # (B, nkv, T, hs)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)
        out = ctx.attend(q, k, v, sparse=self.sparse)                               # (B, nh, T, hs)
        return self.dense(out.transpose(1, 2).reshape(b, t, -1))


class Phi3SmallMLP(nn.Module):
    def __init__(self, config: Phi3SmallConfig):
        super().__init__()
        self.limit = config.gegelu_limit
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.ffn_dropout_prob)

    def forward(self, x):
        return self.dropout(self.down_proj(gegelu(self.up_proj(x), self.limit)))


class Phi3SmallDecoderLayer(nn.Module):
    """Sequential pre-LayerNorm block."""

    def __init__(self, config: Phi3SmallConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Phi3SmallAttention(config, layer_idx)
        self.mlp = Phi3SmallMLP(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, x, rope, ctx: "_Context"):
        x = x + self.self_attn(self.input_layernorm(x), rope, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Context:
    """What every layer's attention needs for one forward call; masks built once, on first use."""

    def __init__(self, config: Phi3SmallConfig, x: torch.Tensor, t: int, past: int,
                 attention_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
                 cache: Optional[KVCache], dropout_p: float):
        self.config, self.cache, self.dropout_p = config, cache, dropout_p
        self.scale = config.attention_scale
        impl = config.attn_implementation
        self.dense_impl = pick_implementation("auto" if impl == "flex" else impl, x)
        # flex for prefill and training (decoding rows are cheap to mask); torch's CPU flex
        # has no backward, and no flex path has dropout: the masked path serves those
        trains_on_cpu = not x.is_cuda and torch.is_grad_enabled() and x.requires_grad
        self.use_flex = ((impl == "flex" or (impl == "auto" and x.is_cuda)) and t > 1
                         and not dropout_p and not trains_on_cpu)
        self.device = x.device
        self.mask = build_mask(t, past + t, x.device, key_padding=attention_mask,
                               document_ids=document_ids)
        # layout coordinates: position within the document, or among the row's real tokens
        if document_ids is not None:
            positions = positions_from_document_ids(document_ids)
        elif attention_mask is not None:
            positions = attention_mask.long().cumsum(-1) - 1
        else:
            positions = torch.arange(past + t, device=x.device)[None]
        # rows differ only with padding or documents; a BlockMask is then per row, else shared
        self.batch, self.tq, self.tk = positions.shape[0], t, past + t
        positions = positions.expand(x.shape[0], -1)  # every row indexable (flex's unfused path)
        self.mask_mod = sparse_mask_mod(config, positions, t, attention_mask, document_ids)
        self._sparse_dense: Optional[torch.Tensor] = None
        self._block_mask = None

    def attend(self, q, k, v, sparse: bool) -> torch.Tensor:
        if not sparse:
            return attend(q, k, v, self.mask, impl=self.dense_impl, dropout_p=self.dropout_p,
                          scale=self.scale)
        if self.use_flex:
            if self._block_mask is None:
                self._block_mask = block_mask(self.mask_mod, self.batch, self.config, self.tq,
                                              self.tk, self.device)
            return flex_attend(q, k, v, self._block_mask, self.scale)
        if self._sparse_dense is None:
            self._sparse_dense = dense_mask(self.mask_mod, self.batch,
                                            self.config.num_attention_heads, self.tq, self.tk,
                                            self.device)
        impl = "eager" if self.dense_impl == "eager" else "sdpa"
        return attend(q, k, v, self._sparse_dense, impl=impl, dropout_p=self.dropout_p,
                      scale=self.scale)


# ----------------------------------------------------------------------------- the model
class Phi3SmallModel(nn.Module):
    """Embeddings, blocks and the final LayerNorm (the `model.` prefix of the checkpoint)."""

    def __init__(self, config: Phi3SmallConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(Phi3SmallDecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False


class Phi3SmallForCausalLM(CausalLM):
    """Phi-3-small: `model(input_ids) -> logits (B, T, vocab)` in fp32, as the reference."""

    config_class = Phi3SmallConfig

    def __init__(self, config: Phi3SmallConfig):
        super().__init__()
        self.config = config
        self.model = Phi3SmallModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight
        self._masked_ids: dict[torch.device, torch.Tensor] = {}  # not a buffer: meta-safe loading
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Phi3SmallMLP):  # Megatron's scaled init of the residual output
            nn.init.normal_(module.down_proj.weight, std=std / (2 * self.config.num_hidden_layers) ** 0.5)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                document_ids: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab), fp32, dummy ids at the fp32 minimum.

        attention_mask: (B, past + T), 1 = token, 0 = padding. The sparse layout counts
                        positions from each row's first real token.
        position_ids:   (B, T) rotary positions; default past..past+T-1 (rotary is relative,
                        so a left-padded row gives the same scores either way).
        document_ids:   (B, T) packed documents: attention and layout stay within each.
        cache:          a `KVCache`, extended in place (generation).
        logits_to_keep: only the last N positions get logits (0 = all).
        """
        b, t = input_ids.shape
        c = self.config
        past = cache.length if cache is not None else 0
        m = self.model
        x = m.embedding_dropout(m.embed_tokens(input_ids))
        if c.mup_embedding_multiplier:
            x = x * c.mup_embedding_multiplier
        if position_ids is None:
            if document_ids is not None:
                position_ids = positions_from_document_ids(document_ids)
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device)[None]
        rope = m.rotary_emb(position_ids, x.dtype)
        ctx = self._context(x, t, past, attention_mask, document_ids, cache)
        for layer in m.layers:
            if m.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, rope, ctx, use_reentrant=False)
            else:
                x = layer(x, rope, ctx)
        x = m.final_layernorm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if cache is not None:
            cache.advance(t)
        logits = self.lm_head(x).float()
        if c.mup_width_multiplier:
            logits = logits / c.mup_width_multiplier
        return logits.index_fill(-1, self._masked(logits.device), torch.finfo(logits.dtype).min)

    def _context(self, x, t, past, attention_mask, document_ids, cache) -> _Context:
        if attention_mask is not None:
            if attention_mask.shape != (x.shape[0], past + t):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                                 f"(batch, past + new) = {(x.shape[0], past + t)}")
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: plain causal kernels for the dense layers
        if document_ids is not None and past:
            raise ValueError("document_ids (packed sequences) cannot be combined with a KV cache")
        dropout_p = self.config.attention_dropout_prob if self.training else 0.0
        return _Context(self.config, x, t, past, attention_mask, document_ids, cache, dropout_p)

    def _masked(self, device: torch.device) -> torch.Tensor:
        if device not in self._masked_ids:
            self._masked_ids[device] = torch.tensor(self.config.masked_token_ids, dtype=torch.long,
                                                    device=device)
        return self._masked_ids[device]
