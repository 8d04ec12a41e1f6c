"""Our models behind transformers' causal-LM call convention, for code written against it.

Evaluation (`phi_lib.scoring`, stage 06, lm-eval's HFLM) calls a model as transformers does:
`model(ids, attention_mask=, position_ids=, past_key_values=, use_cache=).logits` and
`model.generate(input_ids, attention_mask, do_sample=, num_return_sequences=, stop_strings=,
...)`. Checkpoints transformers cannot build (phi-3-small's `phi3small`, phi-3-vision's
`phi3_v`: their published code is remote code we never run) load into our classes and are
wrapped here, so the same scorer runs on them unchanged.

    model = CausalLMInterface(PhiForCausalLM.from_pretrained("outputs/x/05_train/checkpoints/step-4"))
    model(ids, use_cache=True).logits       # (B, T, vocab); .past_key_values is our KVCache
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from phi_lib.model.cache import KVCache


@dataclass
class CausalLMOutput:
    """What transformers' models return, the fields the scorer reads."""

    logits: torch.Tensor
    """(B, T, vocab) next-token logits."""
    past_key_values: Optional[KVCache] = None
    """The cache holding this call's keys and values (with `use_cache=True`)."""


class CausalLMInterface(nn.Module):
    """`model` (PhiForCausalLM, Phi3SmallForCausalLM, Phi3VisionForCausalLM) called as a
    transformers causal LM; weights are shared, nothing is copied."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, use_cache: bool = False,
                **kwargs: Any) -> CausalLMOutput:
        """input_ids (B, T); attention_mask (B, past + T); position_ids (B, T);
        past_key_values: a KVCache from an earlier call, extended in place."""
        if kwargs:
            raise TypeError(f"{type(self.model).__name__}: unsupported arguments {sorted(kwargs)}")
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.model.new_cache()
        logits = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache)
        return CausalLMOutput(logits, cache if use_cache else None)

    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1,
                 pad_token_id: Optional[int] = None, eos_token_id: Optional[int] = -1,
                 stop_strings=None, tokenizer=None) -> torch.Tensor:
        """(B * num_return_sequences, T + new): prompt then continuation, rows of one prompt
        adjacent (transformers' order); greedy unless `do_sample`. Our
        `phi_lib.model.generate.generate` does the decoding."""
        from phi_lib.model.generate import generate

        if num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        stop = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or ())
        return generate(self.model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        temperature=temperature if do_sample else 0.0, top_p=top_p, top_k=top_k,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id, stop=stop,
                        tokenizer=tokenizer if stop else None)
