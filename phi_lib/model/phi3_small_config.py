"""Phi3SmallConfig: the Phi-3-small architecture and its presets (no torch: the params loader
reads the preset names). The model is phi_lib/model/phi3_small.py."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

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

    @classmethod
    def from_model_config(cls, model_cfg) -> "Phi3SmallConfig":
        """From the workbook's `model` section: its PhiConfig-named overrides under their
        phi3small names (`MODEL_SECTION_FIELDS`); one with no counterpart is refused."""
        kw: dict[str, Any] = {}
        for key, value in model_cfg.overrides().items():
            field = MODEL_SECTION_FIELDS.get(key, key)
            if field is None:
                raise ValueError(f"model.{key}: not a Phi-3-small setting (preset "
                                 f"{model_cfg.preset!r}; its rotary covers the whole head)")
            kw[field] = value
        if "ff_intermediate_size" in kw:
            kw["ff_dim_multiplier"] = None
        return cls.from_preset(model_cfg.preset, attn_implementation=model_cfg.attn_implementation, **kw)

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

MODEL_SECTION_FIELDS: dict[str, Optional[str]] = {
    "intermediate_size": "ff_intermediate_size", "rope_theta": "rope_embedding_base",
    "resid_pdrop": "ffn_dropout_prob", "embd_pdrop": "embedding_dropout_prob",
    "attention_dropout": "attention_dropout_prob", "partial_rotary_factor": None,
}
"""The `model` section's keys (PhiConfig's names) that are named otherwise in Phi3SmallConfig
(None: no counterpart); the others (hidden_size, heads, layers, vocab, context) are the same."""
