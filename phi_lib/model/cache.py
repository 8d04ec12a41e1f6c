"""Key/value cache for incremental decoding.

With `max_length` the buffers are allocated once (B, Hkv, max_length, D) per layer and
written in place, so a decoding step costs no reallocation; without it they grow by
concatenation. `length` counts the positions already cached; the model advances it after
each forward (all layers have then written the same new positions).
"""
from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    def __init__(self, num_layers: int, max_length: Optional[int] = None):
        self.num_layers = num_layers
        self.max_length = max_length
        self.length = 0
        self.k: list[Optional[torch.Tensor]] = [None] * num_layers
        self.v: list[Optional[torch.Tensor]] = [None] * num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (B, Hkv, T, D); return all of them so far."""
        end = self.length + k.shape[2]
        if self.max_length is None:
            if self.k[layer] is None:
                self.k[layer], self.v[layer] = k, v
            else:
                self.k[layer] = torch.cat([self.k[layer], k], dim=2)
                self.v[layer] = torch.cat([self.v[layer], v], dim=2)
            return self.k[layer], self.v[layer]
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions > max_length={self.max_length}")
        if self.k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.k[layer] = k.new_empty(shape)
            self.v[layer] = v.new_empty(shape)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (drop finished sequences from a batch)."""
        for i in range(self.num_layers):
            if self.k[i] is not None:
                self.k[i] = self.k[i].index_select(0, rows)
                self.v[i] = self.v[i].index_select(0, rows)

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """transformers' `Cache` name for `select_rows` (phi_lib.scoring calls it)."""
        self.select_rows(rows)
