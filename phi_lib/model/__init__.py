"""The phi models: architectures, Hugging Face checkpoints, generation, and sizing.

    from phi_lib.model import PhiConfig, PhiForCausalLM
    model = PhiForCausalLM(PhiConfig.from_preset("phi-1.5"))
    logits = model(input_ids)                      # (B, T, vocab)

Modules: `config` (PhiConfig, the presets and their tokenizers), `model` (the model around
its blocks), `phi` / `phi3` (one file per architecture family), `rotary` (RoPE, LongRoPE),
`attention` (kernels, masks), `cache`, `generate`, `checkpoint`, `parity`, `planning`.
Names are imported lazily so `import phi_lib.model.config` (the params loader reads the
presets) does not import torch. (`phi_lib.model.generate` is the module; its function is
`phi_lib.model.generate.generate`.)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PhiConfig": "phi_lib.model.config",
    "PRESETS": "phi_lib.model.config",
    "PhiForCausalLM": "phi_lib.model.model",
    "KVCache": "phi_lib.model.cache",
    "generate_text": "phi_lib.model.generate",
    "sample_next": "phi_lib.model.generate",
    "Phi3SmallConfig": "phi_lib.model.phi3_small",
    "Phi3SmallForCausalLM": "phi_lib.model.phi3_small",
}
__all__ = list(_EXPORTS) + ["build_model"]


def build_model(config):
    """The model of a config: PhiForCausalLM, or Phi3SmallForCausalLM for a Phi3SmallConfig."""
    from phi_lib.model.model import PhiForCausalLM
    from phi_lib.model.phi3_small import Phi3SmallConfig, Phi3SmallForCausalLM

    return (Phi3SmallForCausalLM if isinstance(config, Phi3SmallConfig) else PhiForCausalLM)(config)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phi_lib.model' has no attribute {name!r}")
