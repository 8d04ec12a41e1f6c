"""What produced each stage-01 artifact (phi_lib.provenance), one fingerprint per step.

Every result-affecting field of `SynthConfig` belongs to the step it changes, and only there
(tests/test_synth_provenance.py checks the partition), so a changed knob recomputes what it
changes and nothing else:

* topics: where the topics come from (`topics`, the web corpus, LLM expansion);
* prompts: `kinds`, `audiences`, `styles` over the topics (and the templates file);
* generation: the backend (kind, model, dtype, content digest of a local model), `sampling`
  and `run.seed`. Every generated record stores this key as `fingerprint`, next to its
  prompt fields (`prompt`, `prompt_hash`, topic, audience, ...): a record is current when
  both match what the config asks for now;
* filter: the quality-filter knobs and the benchmark files' contents. Kept and dropped
  records store this key as `filter_fingerprint`. A filter change re-filters the stored
  raw completions (`.generated/`) without asking the backend again.
"""
from __future__ import annotations

from importlib import resources
from typing import Optional

from phi_lib.provenance import Fingerprint, digest, path_digest, results_view

TOPIC_FIELDS = ("topics", "web_corpus", "web_extract_chars", "expand_topics_to")
PROMPT_FIELDS = ("kinds", "audiences", "styles")
GENERATION_FIELDS = ("backend", "sampling")
FILTER_FIELDS = ("min_chars", "drop_truncated", "max_repeated_ngrams", "dedup_threshold",
                 "decontaminate_ngram", "decontaminate_against", "check_exercises",
                 "decontaminate_code_against", "decontaminate_ast_threshold",
                 "decontaminate_embedder", "decontaminate_embedding_threshold")


def package_file_digest(name: str) -> str:
    """Content digest of a data file shipped in phi_lib/synth/data (taxonomy, templates)."""
    import hashlib

    blob = resources.files("phi_lib.synth").joinpath("data", name).read_bytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def _view(cfg, fields) -> dict:
    return {f: results_view(getattr(cfg.synth, f)) for f in fields}


def topics_fingerprint(cfg, inputs: dict) -> Fingerprint:
    """The topic list: its source, the LLM expansion (generator and its sampling when asked
    for), the seed; `inputs` are the data files' digests (topic file, web corpus)."""
    s = cfg.synth
    config = {"run": {"seed": cfg.run.seed}, "synth": _view(cfg, TOPIC_FIELDS)}
    if s.topics == "web":  # one web extract per textbook sample
        config["synth"]["kinds"] = {"textbook": s.kinds.get("textbook", 0)}
    if s.expand_topics_to:
        config["synth"]["backend"] = results_view(s.backend)
        config["synth"]["sampling"] = {"temperature": s.sampling.temperature,
                                       "top_p": s.sampling.top_p}
    return Fingerprint.of(config=config,
                          inputs={"taxonomy": package_file_digest("taxonomy.yaml"), **inputs})


def prompts_fingerprint(cfg, topics_digest: str) -> Fingerprint:
    return Fingerprint.of(
        config={"run": {"seed": cfg.run.seed}, "synth": _view(cfg, PROMPT_FIELDS)},
        inputs={"topics": topics_digest, "templates": package_file_digest("templates.yaml")})


def generation_fingerprint(cfg, run_dir=None) -> Fingerprint:
    """What decides a completion besides its prompt: backend identity, sampling, seed."""
    from phi_lib.backends import backend_identity

    s = cfg.synth
    return Fingerprint.of(
        config={"run": {"seed": cfg.run.seed},
                "synth": {"backend": results_view(s.backend), "sampling": results_view(s.sampling)}},
        inputs={"generator": backend_identity(s.backend, run_dir)["model_identity"]})


def filter_fingerprint(cfg, benchmarks: dict) -> Fingerprint:
    """The quality filters' knobs and the contents of the benchmarks decontaminated against
    (`benchmarks`: name -> path)."""
    return Fingerprint.of(config={"synth": _view(cfg, FILTER_FIELDS)},
                          inputs={f"benchmark:{k}": path_digest(p) for k, p in benchmarks.items()})


def completion_hash(text: str, finish_reason: str) -> str:
    """Identity of a raw completion: a filter verdict is reused only for the same one."""
    return digest([text, finish_reason])


def spec_matches(record: dict, spec_fields: Optional[dict]) -> bool:
    """True if `record` was made from exactly this prompt spec (`PromptSpec.fields()`)."""
    return spec_fields is not None and all(record.get(k) == v for k, v in spec_fields.items())
