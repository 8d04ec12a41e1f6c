"""The phi model: architecture, Hugging Face checkpoints, generation, and sizing.

    from phi_lib.model import PhiConfig, PhiForCausalLM
    model = PhiForCausalLM(PhiConfig.from_preset("phi-1.5"))
    logits = model(input_ids)                      # (B, T, vocab)
"""
from phi_lib.model.cache import KVCache
from phi_lib.model.config import PRESETS, PhiConfig
from phi_lib.model.generate import generate, generate_text, sample_next
from phi_lib.model.model import PhiForCausalLM
from phi_lib.model.phi3_small import Phi3SmallConfig, Phi3SmallForCausalLM


def build_model(config):
    """The model of a config: PhiForCausalLM, or Phi3SmallForCausalLM for a Phi3SmallConfig."""
    return (Phi3SmallForCausalLM if isinstance(config, Phi3SmallConfig) else PhiForCausalLM)(config)


__all__ = ["PhiConfig", "PhiForCausalLM", "Phi3SmallConfig", "Phi3SmallForCausalLM", "KVCache",
           "PRESETS", "build_model", "generate", "generate_text", "sample_next"]
