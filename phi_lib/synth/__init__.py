"""Stage 01: synthetic textbooks and exercises (phi-1 sec. 2.2, phi-1.5 sec. 2).

    stage = synth.SynthStage(cfg, out)
    stage.topics(); stage.prompts(); stage.generate(); stage.filter(); stage.report()
    manifest = stage.write_manifest()

See phi_lib.synth.stage for the steps and phi_lib.synth.fingerprints for what makes each
artifact current.
"""
from __future__ import annotations

from phi_lib.synth.fingerprints import filter_fingerprint, generation_fingerprint
from phi_lib.synth.generate import read_generated, read_samples, record_seed
from phi_lib.synth.prompts import KINDS, PromptSpec, build_prompt, build_prompts
from phi_lib.synth.stage import SynthStage, prompts_table, topics_table
from phi_lib.synth.topics import Topic, load_topics, seed_taxonomy

__all__ = ["KINDS", "PromptSpec", "SynthStage", "Topic", "build_prompt", "build_prompts",
           "filter_fingerprint", "generation_fingerprint", "load_topics", "prompts_table",
           "read_generated", "read_samples", "record_seed", "seed_taxonomy", "topics_table"]
