"""PhiConfig: the architecture of every phi model, with the presets of the papers.

Field names are those of `transformers.PhiConfig` / `Phi3Config`, so `config.json` round
trips with Hugging Face: `to_hf_dict()` writes what transformers reads, `from_hf_dict()`
reads both the 4.x layout (top-level `rope_theta`, `partial_rotary_factor`) and the 5.x one
(`rope_parameters`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

ARCHS = ("phi", "phi3")
"""`phi`: phi-1/1.5/2 (parallel attention + MLP over one LayerNorm, partial rotary, gelu,
biases). `phi3`: phi-3 (Llama-like: RMSNorm, sequential block, SwiGLU, full rotary, no bias)."""

ROPE_TYPES = ("default", "longrope")
"""Rotary embeddings: plain RoPE, or LongRoPE (transformers also reads the older name `su`)."""


@dataclass
class PhiConfig:
    """Architecture hyperparameters (names follow transformers)."""

    arch: str = "phi"
    """`phi` (phi-1, phi-1.5, phi-2) or `phi3` (phi-3)."""
    vocab_size: int = 51200
    """Embedding rows: the 50295-token codegen vocabulary padded to 51200 (phi-3: 32064)."""
    hidden_size: int = 2048
    """Model width."""
    intermediate_size: int = 8192
    """MLP width (phi: 4 x hidden)."""
    num_hidden_layers: int = 24
    """Transformer blocks."""
    num_attention_heads: int = 32
    """Query heads."""
    num_key_value_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); empty = num_attention_heads."""
    max_position_embeddings: int = 2048
    """Context length."""
    partial_rotary_factor: float = 0.5
    """Fraction of each head that gets rotary embedding (phi: 32 of 64 dims; phi-3: all)."""
    rope_theta: float = 10000.0
    """Rotary base."""
    rope_type: str = "default"
    """`default` (plain RoPE) or `longrope` (phi-3 128K: per-frequency rescale factors, see
    rotary.py)."""
    original_max_position_embeddings: Optional[int] = None
    """Context the model was pretrained with before LongRoPE extended it (phi-3 128K: 4096):
    the short factors apply up to it, the long ones beyond; empty = max_position_embeddings."""
    rope_short_factor: Optional[list[float]] = None
    """LongRoPE rescale factor per rotary frequency (rotary_dim / 2 values) up to
    original_max_position_embeddings."""
    rope_long_factor: Optional[list[float]] = None
    """LongRoPE rescale factor per rotary frequency beyond original_max_position_embeddings."""
    hidden_act: str = "gelu_new"
    """`gelu_new` (tanh gelu, phi) or `silu` (SwiGLU gate, phi-3)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (phi)."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon (phi-3)."""
    qk_layernorm: bool = False
    """LayerNorm over each query/key head (a transformers.PhiConfig option; off in phi)."""
    resid_pdrop: float = 0.0
    """Dropout on the attention and MLP outputs (phi-1 trained with 0.1)."""
    embd_pdrop: float = 0.0
    """Dropout on the embeddings."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities."""
    initializer_range: float = 0.02
    """Std of the normal init of weights."""
    sliding_window: Optional[int] = None
    """Sliding-window attention span in tokens (phi-3-mini-4k: 2047); empty = full causal."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the LM head (never in phi)."""
    bos_token_id: Optional[int] = None
    """Beginning-of-sequence id written to config.json."""
    eos_token_id: Optional[int] = None
    """End-of-sequence id written to config.json."""
    pad_token_id: Optional[int] = None
    """Padding id written to config.json."""
    attn_implementation: str = "auto"
    """`auto` (flash-attn 2 on CUDA when installed, else SDPA), `flash_attention_2`, `sdpa`, `eager`."""
    name: str = ""
    """The preset this config came from (informational)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch: unknown {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.rotary_dim % 2 or self.rotary_dim <= 0:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor} gives rotary dim "
                             f"{self.rotary_dim} of head dim {self.head_dim}: must be even and > 0")
        if self.attn_implementation not in ("auto", "flash_attention_2", "sdpa", "eager"):
            raise ValueError(f"attn_implementation: unknown {self.attn_implementation!r}")
        self._check_rope()

    def _check_rope(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type: unknown {self.rope_type!r}; known: {', '.join(ROPE_TYPES)}")
        if self.rope_type == "default":
            if self.rope_short_factor is not None or self.rope_long_factor is not None:
                raise ValueError("rope_short_factor/rope_long_factor are LongRoPE settings: "
                                 "set rope_type='longrope' or leave them empty")
            return
        if not self.original_max_position_embeddings:
            raise ValueError("rope_type='longrope' needs original_max_position_embeddings")
        for name in ("rope_short_factor", "rope_long_factor"):
            factors = getattr(self, name)
            if factors is None or len(factors) != self.rotary_dim // 2:
                raise ValueError(f"{name}: LongRoPE needs rotary_dim / 2 = {self.rotary_dim // 2} "
                                 f"factors, got {None if factors is None else len(factors)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)  # int() as transformers does

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PhiConfig":
        """A named architecture (a key of `PRESETS`: `phi-tiny`, `phi-1.5`, `phi-2`, `phi3-tiny`,
        `phi-3-mini`, `phi-3-mini-128k`, `phi-3.5-mini`, `phi-3-medium` ...) with field overrides.
        The phi-3-small presets (`phi-3-small`, `phi3-small-tiny`) give a `Phi3SmallConfig`
        (phi_lib/model/phi3_small.py)."""
        from phi_lib.model.phi3_small import PRESETS as SMALL_PRESETS, Phi3SmallConfig

        if name in SMALL_PRESETS:
            return Phi3SmallConfig.from_preset(name, **overrides)
        if name not in PRESETS:
            import difflib

            known = [*PRESETS, *SMALL_PRESETS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown preset {name!r}{hint} (known: {', '.join(known)})")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise ValueError(f"unknown PhiConfig field(s) {bad}; fields are {sorted(fields)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_model_config(cls, model_cfg) -> "PhiConfig":
        """From the `model` section of the workbook config (preset + the fields it sets)."""
        return cls.from_preset(model_cfg.preset, attn_implementation=model_cfg.attn_implementation,
                               **model_cfg.overrides())

    def replace(self, **changes: Any) -> "PhiConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Hugging Face config.json
    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` of the equivalent `transformers` model (PhiForCausalLM/Phi3ForCausalLM)."""
        d: dict[str, Any] = {
            "architectures": ["PhiForCausalLM" if self.arch == "phi" else "Phi3ForCausalLM"],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": self.hidden_act,
            "resid_pdrop": self.resid_pdrop,
            "embd_pdrop": self.embd_pdrop,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
            # both layouts: transformers 5 reads rope_parameters, 4.x the top-level keys
            "rope_parameters": {"rope_type": self.rope_type, "rope_theta": self.rope_theta,
                                "partial_rotary_factor": self.partial_rotary_factor},
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        if self.arch == "phi":
            d.update(layer_norm_eps=self.layer_norm_eps, qk_layernorm=self.qk_layernorm)
        else:
            d.update(rms_norm_eps=self.rms_norm_eps, sliding_window=self.sliding_window,
                     original_max_position_embeddings=self.original_max_position_embeddings
                     or self.max_position_embeddings)
        if self.rope_type == "longrope":
            factors = {"short_factor": list(self.rope_short_factor),
                       "long_factor": list(self.rope_long_factor)}
            d["rope_parameters"].update(
                factors, original_max_position_embeddings=self.original_max_position_embeddings)
            d["rope_scaling"] = {"type": "longrope", **factors}  # the published (4.x) layout
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "PhiConfig":
        """Read a transformers `config.json` (model_type `phi` or `phi3`, 4.x or 5.x layout)."""
        model_type = d.get("model_type")
        if model_type == "phi3small":
            raise ValueError("config.json: model_type 'phi3small' is Phi-3-small: read it with "
                             "phi_lib.model.phi3_small.Phi3SmallConfig.from_hf_dict")
        if model_type not in ARCHS:
            raise ValueError(
                f"config.json: model_type {model_type!r} is not supported (need 'phi' or 'phi3'; "
                "the early 'phi-msft'/MixFormer layout must be converted by transformers first)")
        # transformers 5 nests the rotary settings in rope_parameters, 4.x had rope_scaling;
        # as transformers does, rope_scaling wins when both are there
        rope = {**(d.get("rope_parameters") or {}), **(d.get("rope_scaling") or {})}
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        rope_type = "longrope" if rope_type == "su" else rope_type  # phi-3-vision's older name
        if rope_type not in ROPE_TYPES:
            raise NotImplementedError(f"config.json: rope type {rope_type!r} is not implemented "
                                      f"(known: {', '.join(ROPE_TYPES)})")
        if {"factor", "attention_factor"} & set(rope):
            raise NotImplementedError("config.json: an explicit LongRoPE `factor`/`attention_factor` is "
                                      "not implemented (phi-3 derives both from the two context lengths)")
        kw: dict[str, Any] = {"arch": model_type, "rope_type": rope_type}
        skip = ("arch", "name", "attn_implementation", "rope_type", "original_max_position_embeddings")
        for f in dataclasses.fields(cls):
            if f.name in d and f.name not in skip:
                kw[f.name] = d[f.name]
        if rope_type == "longrope":
            kw["original_max_position_embeddings"] = (d.get("original_max_position_embeddings")
                                                      or rope.get("original_max_position_embeddings"))
            kw["rope_short_factor"] = [float(x) for x in rope["short_factor"]]
            kw["rope_long_factor"] = [float(x) for x in rope["long_factor"]]
        kw["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        default_factor = 0.5 if model_type == "phi" else 1.0
        kw["partial_rotary_factor"] = rope.get("partial_rotary_factor",
                                               d.get("partial_rotary_factor", default_factor))
        if model_type == "phi3":
            kw.setdefault("hidden_act", "silu")
        kw["name"] = d.get("_name_or_path", "") or ""
        kw.update(overrides)
        return cls(**kw)


# Architectures of the papers. Parameter counts, exact, on the meta device and equal to
# transformers' own count of the same config.json (tests/test_model_planning.py):
#   phi-1-small 356,794,368; phi-1/phi-1.5 1,418,270,720; phi-2 2,779,683,840;
#   phi-3-mini (4K, 128K) and phi-3.5-mini 3,821,079,552; phi-3-medium (4K, 128K) 13,960,238,080.
_PHI = dict(arch="phi", vocab_size=51200, partial_rotary_factor=0.5, hidden_act="gelu_new",
            max_position_embeddings=2048, bos_token_id=50256, eos_token_id=50256)
# phi-3 (Llama-like block): 32000 Llama-2 pieces + chat tokens padded to 32064, full rotary.
_PHI3 = dict(arch="phi3", vocab_size=32064, partial_rotary_factor=1.0, hidden_act="silu",
             rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=32000,
             pad_token_id=32000)
_MINI = dict(_PHI3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32)
_MEDIUM = dict(_PHI3, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
               num_attention_heads=40, num_key_value_heads=10)

# LongRoPE factors of Phi-3-mini-128k-instruct's config.json (June 2024; data folder
# `tokenizers/phi-3-configs/Phi-3-mini-128k-instruct.json`, checked equal by a test).
MINI_128K_SHORT_FACTOR = [
    1.1, 1.1, 1.1, 1.3000000000000003, 1.3500000000000003, 1.3500000000000003, 1.4000000000000004,
    1.5500000000000005, *[2.000000000000001] * 17, *[2.0500000000000007] * 6, 2.1000000000000005,
    2.1000000000000005, 2.1500000000000004, *[2.25] * 5, 2.3999999999999995, 2.4499999999999993,
    2.499999999999999, 2.6999999999999984, 2.6999999999999984, 2.7499999999999982, 2.799999999999998,
    2.8999999999999977, 3.049999999999997]
MINI_128K_LONG_FACTOR = [
    1.0700000524520874, 1.1200000047683716, 1.149999976158142, 1.4199999570846558, 1.5699999332427979,
    1.7999999523162842, 2.129999876022339, 2.129999876022339, 3.009999990463257, 5.910000324249268,
    6.950000286102295, 9.070000648498535, 9.930000305175781, 10.710000038146973, 11.130000114440918,
    14.609999656677246, 15.409998893737793, 19.809999465942383, 37.279998779296875, 38.279998779296875,
    38.599998474121094, 40.12000274658203, 46.20000457763672, 50.940006256103516, 53.66000747680664,
    54.9373893737793, 56.89738845825195, 57.28738784790039, 59.98738479614258, 60.86738586425781,
    60.887386322021484, 61.71739196777344, 62.91739273071289, 62.957393646240234, 63.41739273071289,
    63.8173942565918, 63.83739471435547, 63.897396087646484, 63.93739700317383, 64.06739807128906,
    64.11434936523438, 64.12435150146484, 64.15435028076172, 64.19435119628906, 64.24435424804688,
    64.57435607910156, 64.69000244140625, 64.76000213623047]
_LONG = dict(max_position_embeddings=131072, original_max_position_embeddings=4096,
             rope_type="longrope", sliding_window=262144)

PRESETS: dict[str, dict[str, Any]] = {
    # Smoke: phi's head geometry (head dim 64, rotary dim 32) at a CPU-minutes size.
    "phi-tiny": dict(_PHI, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=2),
    # phi-1 paper: 350M = 20 layers, width 1024, MLP 4096, 16 heads of 64.
    "phi-1-small": dict(_PHI, hidden_size=1024, intermediate_size=4096, num_hidden_layers=20,
                        num_attention_heads=16),
    # phi-1 paper: 1.3B = 24 layers, width 2048, MLP 8192, 32 heads of 64, rotary dim 32.
    "phi-1": dict(_PHI, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                  num_attention_heads=32),
    # phi-1.5: the phi-1 architecture exactly.
    "phi-1.5": dict(_PHI, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                    num_attention_heads=32),
    # phi-2: 32 layers, width 2560, 32 heads of 80, rotary dim 32 (factor 0.4).
    "phi-2": dict(_PHI, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                  num_attention_heads=32, partial_rotary_factor=0.4),
    # Smoke: the phi-3 block with phi-3's head dim 96 and grouped-query attention (2 query
    # heads per key/value head), full rotary, the phi-3 vocabulary.
    "phi3-tiny": dict(_PHI3, hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048),
    # Phi-3-mini-4k-instruct: 32 x 3072, SwiGLU 8192, 32 heads of 96, 4K context, sliding
    # window 2047 (its config.json is not in the data folder; RECIPE.md's figures).
    "phi-3-mini": dict(_MINI, max_position_embeddings=4096, sliding_window=2047),
    # Phi-3-mini-128k-instruct: the same weights' shapes, LongRoPE from 4K to 128K; every
    # field as its config.json in the data folder.
    "phi-3-mini-128k": dict(_MINI, **_LONG, rope_short_factor=MINI_128K_SHORT_FACTOR,
                            rope_long_factor=MINI_128K_LONG_FACTOR),
    # Phi-3.5-mini-instruct: the mini architecture with 128K LongRoPE. Its own config.json
    # (and factors) is not in the data folder: the Phi-3-mini-128k factors stand in; a real
    # checkpoint's config.json brings its own (`from_hf_dict`).
    "phi-3.5-mini": dict(_MINI, **_LONG, rope_short_factor=MINI_128K_SHORT_FACTOR,
                         rope_long_factor=MINI_128K_LONG_FACTOR),
    # Phi-3-medium-4k-instruct: 40 x 5120, SwiGLU 17920, 40 query / 10 key-value heads of 128.
    "phi-3-medium": dict(_MEDIUM, max_position_embeddings=4096, sliding_window=2047),
    # Phi-3-medium-128k-instruct: medium with LongRoPE (64 factors for head dim 128). Its
    # published factors are not in the data folder: neutral factors (1.0, plain RoPE
    # frequencies with the LongRoPE attention factor) until a checkpoint's config.json
    # supplies them.
    "phi-3-medium-128k": dict(_MEDIUM, **_LONG, rope_short_factor=[1.0] * 64,
                              rope_long_factor=[1.0] * 64),
}
PRESETS["phi-3-mini-4k"] = PRESETS["phi-3-mini"]
PRESETS["phi-3-medium-4k"] = PRESETS["phi-3-medium"]

TOKENIZERS: dict[str, str] = {
    **{name: "codegen-350M-mono" for name in ("phi-tiny", "phi-1-small", "phi-1", "phi-1.5", "phi-2")},
    **{name: "phi-3-mini" for name in ("phi3-tiny", "phi-3-mini", "phi-3-mini-4k", "phi-3-mini-128k",
                                       "phi-3.5-mini", "phi-3-medium", "phi-3-medium-4k",
                                       "phi-3-medium-128k")},
    "phi-3-small": "phi-3-small",
    "phi3-small-tiny": "phi-3-small",
}
"""The tokenizer each preset is trained with (a folder under `tokenizers/` of the data folder):
codegen-350M-mono for phi-1/1.5/2, the Llama-2 SentencePiece + chat tokens of phi-3-mini for
phi-3-mini/medium/3.5-mini, tiktoken cl100k + specials for phi-3-small."""


def default_tokenizer(preset: str) -> str:
    """The tokenizer of a preset (`TOKENIZERS`); unknown presets must name theirs."""
    if preset not in TOKENIZERS:
        raise ValueError(f"preset {preset!r} has no default tokenizer: set model.tokenizer "
                         f"(known presets: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[preset]
