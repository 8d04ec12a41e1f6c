"""The phi models: architectures, Hugging Face checkpoints, generation, and sizing.

    from phi_lib.model import PhiConfig, PhiForCausalLM
    model = PhiForCausalLM(PhiConfig.from_preset("phi-1.5"))
    logits = model(input_ids)                      # (B, T, vocab)

Modules: `config` (PhiConfig, the presets and their tokenizers), `model` (the model around
its blocks), `phi` / `phi3` (one file per architecture family), `phi3_small` (Phi-3-small, its
own model; `phi3_small_config` its config and presets), `phi3_vision` (+ `phi3_vision_processor`,
its image processor and prompt format), `rotary` (RoPE, LongRoPE),
`attention` (kernels, masks), `cache`, `generate`, `checkpoint`, `parity`, `planning`,
`hf_interface` (transformers' causal-LM call convention over our models, for evaluation).
`PhiConfig.from_model_config` gives the config of any `model.preset` (a Phi3SmallConfig for
the phi-3-small ones) and `build_model` its model.
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
    "Phi3VisionConfig": "phi_lib.model.phi3_vision",
    "Phi3VisionForCausalLM": "phi_lib.model.phi3_vision",
}
__all__ = list(_EXPORTS) + ["build_model"]


def build_model(config):
    """The model of a config: PhiForCausalLM, Phi3SmallForCausalLM for a Phi3SmallConfig, or
    Phi3VisionForCausalLM for a Phi3VisionConfig."""
    from phi_lib.model.model import PhiForCausalLM
    from phi_lib.model.phi3_small import Phi3SmallConfig, Phi3SmallForCausalLM
    from phi_lib.model.phi3_vision import Phi3VisionConfig, Phi3VisionForCausalLM

    if isinstance(config, Phi3VisionConfig):
        return Phi3VisionForCausalLM(config)
    return (Phi3SmallForCausalLM if isinstance(config, Phi3SmallConfig) else PhiForCausalLM)(config)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phi_lib.model' has no attribute {name!r}")
