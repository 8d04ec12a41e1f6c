"""The phi model: architecture, Hugging Face checkpoints, generation, and sizing.

    from phi_lib.model import PhiConfig, PhiForCausalLM
    model = PhiForCausalLM(PhiConfig.from_preset("phi-1.5"))
    logits = model(input_ids)                      # (B, T, vocab)
"""
from phi_lib.model.cache import KVCache
from phi_lib.model.config import PRESETS, PhiConfig
from phi_lib.model.generate import generate, generate_text, sample_next
from phi_lib.model.model import PhiForCausalLM

__all__ = ["PhiConfig", "PhiForCausalLM", "KVCache", "PRESETS", "generate", "generate_text",
           "sample_next"]
