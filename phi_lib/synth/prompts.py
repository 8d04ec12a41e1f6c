"""Prompt building: templates (data) x topics x audiences x styles, drawn by a seeded sampler.

Record `i` of a kind is built from `random.Random(f"{seed}:{kind}:{i}")` alone, so a prompt
depends only on (seed, kind, i) and the inputs: a rerun, a resumed run or a bigger run
rebuilds exactly the same prompts for the same indices.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Optional

from phi_lib.config import SynthConfig
from phi_lib.synth.topics import Topic, data_file

KINDS = ("textbook", "code_textbook", "code_exercises")
CODE_STYLES = ("textbook narrative", "tutorial", "Q&A with exercises", "worked examples")
"""Styles for code kinds (blog/story/wikihow do not fit a Python textbook)."""


@dataclass(frozen=True)
class PromptSpec:
    id: str
    kind: str
    index: int
    seed: int
    topic: str
    subject: str
    topic_origin: str
    audience: str
    style: str
    template: int
    """Index of the template in `data/templates.yaml`."""
    prompt: str
    function_name: Optional[str] = None
    source_id: Optional[str] = None
    """Web document id when the prompt carries a web extract."""

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16]

    def fields(self) -> dict:
        d = asdict(self)
        d["prompt_hash"] = self.prompt_hash
        return d


def build_prompt(kind: str, index: int, topics: list[Topic], cfg: SynthConfig, seed: int,
                 templates: Optional[dict] = None) -> PromptSpec:
    """Prompt `index` of `kind`: a function of (seed, kind, index, inputs) only."""
    if kind not in KINDS:
        raise ValueError(f"synth.kinds: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    templates = templates or data_file("templates.yaml")
    group = "general" if kind == "textbook" else "code"
    pool = [t for t in topics if t.group == group]
    if not pool:
        raise ValueError(f"synth.topics: no {group} topics for kind {kind!r}")
    rng = random.Random(f"{seed}:{kind}:{index}")
    topic = rng.choice(pool)
    audience = rng.choice(cfg.audiences)
    styles = cfg.styles
    if kind != "textbook":
        styles = [s for s in cfg.styles if s in CODE_STYLES] or list(CODE_STYLES)
    style = rng.choice(styles)
    key = "textbook_web" if topic.extract else kind
    t_index = rng.randrange(len(templates[key]))
    function_name = None
    if kind == "code_exercises":
        function_name = (f"{rng.choice(templates['function_name_verbs'])}_"
                         f"{rng.choice(templates['function_name_nouns'])}")
    prompt = templates[key][t_index].format(
        topic=topic.name, subject=topic.subject, audience=audience, style=style,
        function_name=function_name or "", extract=topic.extract)
    return PromptSpec(id=f"{kind}-{index:07d}", kind=kind, index=index, seed=seed,
                      topic=topic.name, subject=topic.subject, topic_origin=topic.origin,
                      audience=audience, style=style, template=t_index, prompt=prompt,
                      function_name=function_name, source_id=topic.source_id or None)


def build_prompts(cfg: SynthConfig, topics: list[Topic], seed: int) -> list[PromptSpec]:
    """Every prompt of the run: `cfg.kinds[kind]` per kind, in (kind, index) order."""
    templates = data_file("templates.yaml")
    return [build_prompt(kind, i, topics, cfg, seed, templates)
            for kind, n in cfg.kinds.items() for i in range(n)]
