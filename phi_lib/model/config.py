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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)  # int() as transformers does

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PhiConfig":
        """A named architecture (`phi-tiny`, `phi-1-small`, `phi-1`, `phi-1.5`, `phi-2`,
        `phi-3-mini`) with field overrides. The phi-3-small presets (`phi-3-small`,
        `phi3-small-tiny`) give a `Phi3SmallConfig` (phi_lib/model/phi3_small.py)."""
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
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta,
                                "partial_rotary_factor": self.partial_rotary_factor},
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        if self.arch == "phi":
            d.update(layer_norm_eps=self.layer_norm_eps, qk_layernorm=self.qk_layernorm)
        else:
            d.update(rms_norm_eps=self.rms_norm_eps, sliding_window=self.sliding_window,
                     original_max_position_embeddings=self.max_position_embeddings)
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
        rope = dict(d.get("rope_parameters") or {})
        scaling = d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise NotImplementedError(f"config.json: rope type {rope_type!r} (e.g. phi-3 128k longrope) "
                                      "is not implemented; only the default rotary embedding is")
        kw: dict[str, Any] = {"arch": model_type}
        for f in dataclasses.fields(cls):
            if f.name in d and f.name not in ("arch", "name", "attn_implementation"):
                kw[f.name] = d[f.name]
        kw["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        default_factor = 0.5 if model_type == "phi" else 1.0
        kw["partial_rotary_factor"] = rope.get("partial_rotary_factor",
                                               d.get("partial_rotary_factor", default_factor))
        if model_type == "phi3":
            kw.setdefault("hidden_act", "silu")
        kw["name"] = d.get("_name_or_path", "") or ""
        kw.update(overrides)
        return cls(**kw)


# Architectures of the papers. Parameter counts (tests/test_model_planning.py):
# phi-1-small 356,794,368; phi-1/phi-1.5 1,418,270,720; phi-2 2,779,683,840; phi-3-mini 3,821,079,552.
_PHI = dict(arch="phi", vocab_size=51200, partial_rotary_factor=0.5, hidden_act="gelu_new",
            max_position_embeddings=2048, bos_token_id=50256, eos_token_id=50256)
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
    # phi-3-mini-4k: 32 layers, width 3072, SwiGLU 8192, full rotary, vocab 32064.
    "phi-3-mini": dict(arch="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=1.0,
                       hidden_act="silu", max_position_embeddings=4096, sliding_window=2047,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
}
