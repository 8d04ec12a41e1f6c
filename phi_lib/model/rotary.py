"""Rotary position embedding: plain RoPE (phi, phi-3 4K) and LongRoPE (phi-3 128K).

Both compute cos/sin from the positions of each call, in fp32, exactly as transformers does
(`position.float() * inv_freq`, then cos/sin times an attention factor), so the numbers are
the same bit for bit and nothing of size `max_position_embeddings` is ever tabulated (a
128K table would be 100 MB).

LongRoPE (arXiv 2402.13753; transformers `_compute_longrope_parameters`):

    s = max_position_embeddings / original_max_position_embeddings
    attention factor = sqrt(1 + ln s / ln original_max)   (1 if s <= 1), on cos and sin at every length
    inv_freq[i] = 1 / (ext[i] * theta^(2i / dim))          ext = long factors if the call's
                                                           max(position) + 1 > original_max, else short

The short/long switch is per forward call, over the whole batch (transformers'
`longrope_frequency_update`); generation recomputes the cache when it crosses the boundary
(`generate.py`), so earlier keys are not left rotated with the short factors.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from phi_lib.model.config import PhiConfig


def inverse_frequencies(config: PhiConfig, factors=None) -> torch.Tensor:
    """(rotary_dim / 2,) fp32: theta^(-2i/dim), divided by the LongRoPE factors when given.

    On CPU even inside `torch.device("meta")` (checkpoint loading builds the model there).
    """
    dim = config.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    if factors is None:
        return 1.0 / (config.rope_theta ** exponents)
    ext = torch.tensor(factors, dtype=torch.float32, device="cpu")
    return 1.0 / (ext * config.rope_theta ** exponents)


def longrope_attention_factor(config: PhiConfig) -> float:
    """sqrt(1 + ln s / ln original_max) with s = context / original context; 1 when s <= 1."""
    original = config.original_max_position_embeddings or config.max_position_embeddings
    s = config.max_position_embeddings / original
    return 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(original))


class RotaryEmbedding(nn.Module):
    """(cos, sin) of the rotary embedding for integer positions.

    The inverse frequencies are plain attributes, not buffers: `model.half()` would round
    them, and they are not part of a checkpoint.
    """

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.longrope = config.rope_type == "longrope"
        if self.longrope:
            self.short = inverse_frequencies(config, config.rope_short_factor)
            self.long = inverse_frequencies(config, config.rope_long_factor)
            self.original_max = config.original_max_position_embeddings
            self.scale = longrope_attention_factor(config)
        else:
            self.short = self.long = inverse_frequencies(config)
            self.scale = 1.0
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def inv_freq(self, position_ids: torch.Tensor) -> torch.Tensor:
        """The frequencies of this call: LongRoPE's long set once max(position) + 1 > original_max.

        `torch.where` on a device scalar: no host synchronization on GPU.
        """
        device = position_ids.device
        if device not in self._on_device:  # copied once per device, not every step
            self._on_device[device] = (self.short.to(device), self.long.to(device))
        short, long = self._on_device[device]
        if not self.longrope:
            return short
        return torch.where(position_ids.max() + 1 > self.original_max, long, short)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (B or 1, T, rotary_dim), for positions (B or 1, T)."""
        freqs = position_ids[..., None].float() * self.inv_freq(position_ids)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of each head of x (B, H, T, D); pass the rest through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    x_rot = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot
