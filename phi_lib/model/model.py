"""The phi language model around its blocks (nanoGPT style), with Hugging Face parameter names.

    embed_tokens -> [block] x num_hidden_layers -> final norm -> lm_head

The block is the architecture family's: phi.py (phi-1/1.5/2: parallel attention + MLP over
one LayerNorm) or phi3.py (phi-3: sequential Llama block with RMSNorm, fused qkv/gate_up,
grouped-query attention); rotary.py gives both their position embedding (LongRoPE for the
128K phi-3 models). phi adds embedding dropout, a final LayerNorm and an LM head with bias;
phi-3 a final RMSNorm and an LM head without bias.

Module names equal `transformers.PhiForCausalLM` / `Phi3ForCausalLM`, so `state_dict()` is a
Hugging Face checkpoint (see checkpoint.py) and logits match theirs to fp32 round-off
(tests/test_model_parity.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from phi_lib.model.attention import (AttentionContext, build_mask, cu_seqlens_from_document_ids,
                                     pick_implementation, positions_from_document_ids)
from phi_lib.model.cache import KVCache
from phi_lib.model.config import PhiConfig
from phi_lib.model.phi import PhiDecoderLayer
from phi_lib.model.phi3 import Phi3DecoderLayer, Phi3RMSNorm
from phi_lib.model.rotary import RotaryEmbedding, apply_rotary  # noqa: F401 - re-exported

BLOCKS = {"phi": PhiDecoderLayer, "phi3": Phi3DecoderLayer}
"""The decoder block of each architecture family."""


# ----------------------------------------------------------------------------- the model
class PhiModel(nn.Module):
    """Embeddings, blocks and the final norm (the `model.` prefix of the checkpoint)."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BLOCKS[config.arch](config, i) for i in range(config.num_hidden_layers))
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


class CausalLM(nn.Module):
    """What every causal LM of ours offers beside `forward` (phi/phi-3, phi-3-small, phi-3-vision):
    a subclass sets `config_class` and builds `self.model` (with `embed_tokens`) and `self.lm_head`."""

    config_class = PhiConfig

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
    def from_pretrained(cls, name_or_dir: Union[str, Path], **kwargs: Any) -> "CausalLM":
        """Load a Hugging Face checkpoint of this family: a local dir (ours or transformers') or a hub name."""
        from phi_lib.model.checkpoint import from_pretrained

        return from_pretrained(cls, name_or_dir, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "CausalLM":
        return cls(cls.config_class.from_preset(name, **overrides))


class PhiForCausalLM(CausalLM):
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
                logits_to_keep: int = 0, inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, T, vocab) (fp32 math happens in the caller's loss).

        attention_mask: (B, past + T), 1 = token, 0 = padding (transformers convention).
        position_ids:   (B, T) rotary positions; default past..past+T-1, or restarting per
                        document when `document_ids` is given. LongRoPE picks its long
                        factors when the largest one passes original_max_position_embeddings.
        document_ids:   (B, T) packed-sequence document index: attention stays within a
                        document (see `attention.document_ids_from_eos`).
        cache:          a `KVCache`, extended in place (generation).
        logits_to_keep: only the last N positions get logits (0 = all); generation uses 1.
        inputs_embeds:  (B, T, hidden) embeddings to use instead of looking up `input_ids`
                        (phi-3-vision: text embeddings with the image features spliced in).
        """
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        m = self.model
        x = m.embed_dropout(m.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds)
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
        x = m.final_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if cache is not None:
            cache.advance(t)
        return self.lm_head(x)

    def _context(self, x, t, past, attention_mask, document_ids, cache) -> AttentionContext:
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
            return AttentionContext(impl, None, cache, dropout_p, cu, longest)
        mask = build_mask(t, past + t, x.device, key_padding=attention_mask,
                          document_ids=document_ids, sliding_window=self.config.sliding_window)
        return AttentionContext(impl, mask, cache, dropout_p)

