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

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from phi_lib.model.attention import attend, build_mask, pick_implementation, positions_from_document_ids
from phi_lib.model.cache import KVCache
from phi_lib.model.rotary import RotaryEmbedding, apply_rotary

MODEL_TYPE = "phi3small"

# Ids of the Phi-3-small tokenizer (cl100k_base + its specials, padded to 100352) that are no
# token: 100256 (unused cl100k rank), the fim tokens 100258-100260, dummies 100264-100265 and
# 100267-100275, <|endofprompt|> 100276, and the padding dummies 100277-100351. Real specials
# among them: <|endoftext|> 100257, <|system|> 100261, <|user|> 100262, <|assistant|> 100263,
# <|end|> 100266.
PHI3_SMALL_DUMMY_IDS = (100256, 100258, 100259, 100260, 100264, 100265, *range(100267, 100352))

IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flex", "flash_attention_2")


@dataclass
class Phi3SmallConfig:
    """Phi-3-small architecture; field names (and defaults) are those of its config.json."""

    vocab_size: int = 100352
    """Embedding rows: cl100k_base (100,256 ranks) + specials, padded to 100,352."""
    hidden_size: int = 4096
    """Model width."""
    num_hidden_layers: int = 32
    """Transformer blocks."""
    num_attention_heads: int = 32
    """Query heads."""
    num_key_value_heads: int = 8
    """Key/value heads (grouped-query attention: 4 query heads per key/value head)."""
    ff_intermediate_size: Optional[int] = 14336
    """GEGELU width (up_proj has twice as many outputs); empty = from ff_dim_multiplier."""
    ff_dim_multiplier: Optional[int] = None
    """Alternative to ff_intermediate_size: width = multiplier * (hidden // 3) * 2."""
    gegelu_pad_to_256: bool = True
    """Round the multiplier-derived width up to a multiple of 256."""
    hidden_act: str = "gegelu"
    """Only `gegelu`: quick-gelu of the even up_proj outputs times (1 + the odd ones)."""
    gegelu_limit: Optional[float] = 20.0
    """Clamp of the GEGELU inputs (gelu half from above, linear half both sides); empty = none."""
    max_position_embeddings: int = 8192
    """Context length."""
    rope_embedding_base: float = 1_000_000.0
    """Rotary base (theta)."""
    rope_position_scale: float = 1.0
    """Rotary position scale (only 1.0 is implemented, as in the 8k model)."""
    rope_scaling: Optional[dict] = None
    """LongRoPE factors of the 128k model (not implemented: must be empty)."""
    layer_norm_epsilon: float = 1e-5
    """LayerNorm epsilon."""
    blocksparse_block_size: int = 64
    """Tokens per block of the block-sparse layout."""
    blocksparse_num_local_blocks: int = 16
    """Nearest key blocks (itself included) every query block sees."""
    blocksparse_vert_stride: int = 8
    """Every this-many-th key block is seen by all later query blocks (per-head offset)."""
    blocksparse_homo_head_pattern: bool = False
    """True: all heads share one layout (no per-head offset of the vertical blocks)."""
    blocksparse_triton_kernel_block_size: int = 64
    """Tile of the reference's Triton kernel (no effect here; kept for config.json)."""
    dense_attention_every_n_layers: Optional[int] = 2
    """Layer i (0-based) is dense when (i + 1) % n == 0, else block-sparse; empty = all sparse."""
    embedding_dropout_prob: float = 0.1
    """Dropout on the embeddings (training only)."""
    attention_dropout_prob: float = 0.0
    """Dropout on the attention probabilities (training only)."""
    ffn_dropout_prob: float = 0.1
    """Dropout on the MLP output (training only)."""
    initializer_range: float = 0.02
    """Std of the normal init of weights (down_proj: divided by sqrt(2 * layers))."""
    mup_use_scaling: bool = True
    """muP attention scale `mup_attn_multiplier / head_dim`; False = 1/sqrt(head_dim)."""
    mup_width_multiplier: float = 8.0
    """The logits are divided by this (0 = not)."""
    mup_embedding_multiplier: float = 10.0
    """The embeddings are multiplied by this (0 = not)."""
    mup_attn_multiplier: float = 1.0
    """Numerator of the muP attention scale."""
    pad_sequence_to_multiple_of_64: bool = True
    """Reference training-kernel padding (no effect on the numbers; kept for config.json)."""
    reorder_and_upcast_attn: bool = False
    """Unused by the reference; kept for config.json."""
    bos_token_id: Optional[int] = 100257
    """<|endoftext|> (the model has no BOS; the reference sets it to EOS)."""
    eos_token_id: Optional[int] = 100257
    """<|endoftext|>."""
    pad_token_id: Optional[int] = None
    """Padding id written to config.json."""
    dummy_token_ids: Optional[tuple[int, ...]] = None
    """Ids whose logits are masked (never predicted); empty = the Phi-3-small tokenizer's
    (`PHI3_SMALL_DUMMY_IDS` below vocab_size)."""
    attn_implementation: str = "auto"
    """`auto` (CUDA: flash-attn 2 / SDPA dense layers, flex block mask sparse layers; CPU:
    SDPA with masks), `sdpa` (boolean masks everywhere), `eager` (fp32 math with masks),
    `flex` (sparse layers by flex attention on any device), `flash_attention_2`."""
    name: str = ""
    """The preset this config came from (informational)."""

    def __post_init__(self) -> None:
        if self.hidden_act != "gegelu":
            raise ValueError(f"hidden_act: Phi-3-small uses 'gegelu', got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if (self.ff_intermediate_size is None) == (self.ff_dim_multiplier is None):
            raise ValueError("set exactly one of ff_intermediate_size and ff_dim_multiplier")
        if self.rope_scaling:
            raise NotImplementedError("rope_scaling (the 128k model's LongRoPE) is not implemented "
                                      "for phi3small; only the 8k rotary embedding is")
        if self.rope_position_scale != 1.0:
            raise NotImplementedError(f"rope_position_scale={self.rope_position_scale}: only 1.0")
        for f in ("blocksparse_block_size", "blocksparse_num_local_blocks", "blocksparse_vert_stride"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")
        if self.attn_implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation: unknown {self.attn_implementation!r}; "
                             f"known: {', '.join(IMPLEMENTATIONS)}")
        if self.dummy_token_ids is not None:
            self.dummy_token_ids = tuple(int(i) for i in self.dummy_token_ids)
            bad = [i for i in self.dummy_token_ids if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(f"dummy_token_ids {bad[:5]} outside the vocabulary "
                                 f"(vocab_size={self.vocab_size})")

    # ------------------------------------------------------------------ derived
    arch = MODEL_TYPE
    tie_word_embeddings = True  # the LM head is the embedding

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def intermediate_size(self) -> int:
        if self.ff_intermediate_size is not None:
            return self.ff_intermediate_size
        width = self.ff_dim_multiplier * (self.hidden_size // 3) * 2
        return -(-width // 256) * 256 if self.gegelu_pad_to_256 else width

    # what rotary.RotaryEmbedding reads: plain full-head rotary with this base (the 8k model)
    @property
    def rope_type(self) -> str:
        return "default"

    @property
    def rotary_dim(self) -> int:
        return self.head_dim

    @property
    def rope_theta(self) -> float:
        return self.rope_embedding_base

    @property
    def partial_rotary_factor(self) -> float:
        return 1.0

    @property
    def attention_scale(self) -> float:
        """Softmax scale: muP's multiplier / head_dim instead of 1/sqrt(head_dim)."""
        if self.mup_use_scaling:
            return self.mup_attn_multiplier / self.head_dim
        return self.head_dim ** -0.5

    @property
    def masked_token_ids(self) -> tuple[int, ...]:
        if self.dummy_token_ids is not None:
            return self.dummy_token_ids
        return tuple(i for i in PHI3_SMALL_DUMMY_IDS if i < self.vocab_size)

    def is_dense_layer(self, layer_idx: int) -> bool:
        n = self.dense_attention_every_n_layers
        return bool(n) and (layer_idx + 1) % n == 0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "Phi3SmallConfig":
        """`phi-3-small` (the published 8k model) or `phi3-small-tiny`, with field overrides."""
        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(name, PRESETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown phi3small preset {name!r}{hint} (known: {', '.join(PRESETS)})")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise ValueError(f"unknown Phi3SmallConfig field(s) {bad}; fields are {sorted(fields)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    def replace(self, **changes: Any) -> "Phi3SmallConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ config.json
    def to_hf_dict(self) -> dict[str, Any]:
        """The checkpoint's `config.json` (the remote code's Phi3SmallConfig reads it)."""
        skip = {"name", "attn_implementation", "dummy_token_ids"}
        d: dict[str, Any] = {"architectures": ["Phi3SmallForCausalLM"], "model_type": MODEL_TYPE}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip})
        d.update(tie_word_embeddings=True, use_cache=True)
        if self.dummy_token_ids is not None:  # not a published key: only when not the tokenizer's
            d["dummy_token_ids"] = list(self.dummy_token_ids)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "Phi3SmallConfig":
        """Read a phi3small `config.json` (ours, or the published one)."""
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json: model_type {d.get('model_type')!r} is not {MODEL_TYPE!r}")
        if d.get("tie_word_embeddings", True) is False:
            raise ValueError("config.json: tie_word_embeddings=false; phi3small ties its LM head")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls)
              if f.name in d and f.name not in ("name", "attn_implementation")}
        scaling = kw.get("rope_scaling") or {}
        if (scaling.get("rope_type") or scaling.get("type")) == "default":
            kw["rope_scaling"] = None  # transformers 5 writes the plain rotary this way
        kw["name"] = d.get("_name_or_path", "") or ""
        kw.update(overrides)
        return cls(**kw)


# Phi-3-small-8k: the reference configuration's defaults, which are the published config.json
# of microsoft/Phi-3-small-8k-instruct (not in the data folder; quoted alike by several
# third-party repositories). 7,392,272,384 parameters (tied head; tests/test_phi3_small.py).
PRESETS: dict[str, dict[str, Any]] = {
    "phi-3-small": {},
    # Smoke: the real vocabulary (the tokenizer's ids) and multipliers, GQA 2:1, head dim 32;
    # blocks of 16 tokens so that a 64-token window already has sparse rows (2 local blocks,
    # every 3rd block vertical, offsets rotating over 4 heads); layers sparse, dense, sparse, dense.
    "phi3-small-tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, ff_intermediate_size=448,
                            max_position_embeddings=2048, blocksparse_block_size=16,
                            blocksparse_triton_kernel_block_size=16,
                            blocksparse_num_local_blocks=2, blocksparse_vert_stride=3),
}


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


class Phi3SmallForCausalLM(nn.Module):
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

    # ------------------------------------------------------------------ conveniences
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # the tied head counts once
        return n - self.model.embed_tokens.weight.numel() if exclude_embeddings else n

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        self.model.gradient_checkpointing = enable

    def new_cache(self, max_length: Optional[int] = None) -> KVCache:
        return KVCache(self.config.num_hidden_layers, max_length=max_length)

    def generate(self, input_ids, attention_mask=None, **kwargs: Any) -> torch.Tensor:
        """Greedy or sampled continuation with a KV cache; see `phi_lib.model.generate.generate`."""
        from phi_lib.model.generate import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    def save_pretrained(self, directory: Union[str, Path], **kwargs: Any) -> Path:
        """config.json + model.safetensors, as the published checkpoint (no lm_head: tied)."""
        from phi_lib.model.checkpoint import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_dir: Union[str, Path], **kwargs: Any) -> "Phi3SmallForCausalLM":
        from phi_lib.model.checkpoint import from_pretrained

        return from_pretrained(cls, name_or_dir, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "Phi3SmallForCausalLM":
        return cls(Phi3SmallConfig.from_preset(name, **overrides))
