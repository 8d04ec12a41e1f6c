"""Where prompt diversity starts: topics (phi-1.5 used ~20K of them, written by an LLM).

Sources: the seed taxonomy shipped in `data/taxonomy.yaml` (subjects -> topics), a user's
text file (one topic per line), or web documents whose extracts seed the prompts
(cosmopedia style). The taxonomy can be expanded by the LLM, with duplicates removed.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from phi_lib.config import SamplingConfig, SynthConfig


@dataclass(frozen=True)
class Topic:
    name: str
    subject: str
    group: str
    """`general` (textbooks) or `code` (Python textbooks and exercises)."""
    origin: str = "seed"
    """`seed` (taxonomy), `llm` (expansion), `user` (a topic file) or `web` (an extract)."""
    extract: str = ""
    """A web excerpt to put in the prompt (`origin == "web"`)."""
    source_id: str = ""
    """The web document's id (`origin == "web"`)."""


def data_file(name: str) -> dict:
    """A YAML file shipped in phi_lib/synth/data."""
    return yaml.safe_load(resources.files("phi_lib.synth").joinpath("data", name).read_text("utf-8"))


def seed_taxonomy() -> list[Topic]:
    out = []
    for group, subjects in data_file("taxonomy.yaml").items():
        for subject, topics in subjects.items():
            out += [Topic(t, subject, group) for t in topics]
    return out


def normalize(name: str) -> str:
    """Dedup key of a topic: lower case, no numbering/bullets/punctuation, single spaces."""
    name = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", name.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", name).split())


def dedup(topics: list[Topic]) -> list[Topic]:
    """First occurrence of each normalized (group, name) kept, order preserved."""
    seen, out = set(), []
    for t in topics:
        key = (t.group, normalize(t.name))
        if key[1] and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def user_topics(path: Path) -> list[Topic]:
    """A text file, one topic per line (`subject: topic` allowed); used for every kind."""
    if not path.is_file():
        raise FileNotFoundError(f"synth.topics: topic file {str(path)!r} not found")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        subject, _, name = line.rpartition(":")
        for group in ("general", "code"):
            out.append(Topic(name.strip(), subject.strip() or "user topics", group, "user"))
    if not out:
        raise ValueError(f"synth.topics: {path} holds no topics")
    return dedup(out)


def web_topics(cfg: SynthConfig, n: int, seed: int, data_dir: Optional[str] = None) -> list[Topic]:
    """`n` web documents (seeded sample) as topics whose extract goes into the prompt."""
    from phi_lib.corpora import iter_documents, resolve_corpus
    from phi_lib.io import ReadStats

    stats = ReadStats()
    docs = [d for d in iter_documents(resolve_corpus(cfg.web_corpus, data_dir), stats=stats)
            if len(d["text"].split()) >= 50]
    if not docs:
        raise ValueError(f"synth.web_corpus: no document of 50+ words in {cfg.web_corpus!r} "
                         f"({stats.summary()})")
    rng = random.Random(f"{seed}:web")
    picks = rng.sample(docs, min(n, len(docs)))
    out = []
    for d in picks:
        text = " ".join(d["text"].split())[:cfg.web_extract_chars]
        out.append(Topic(" ".join(text.split()[:8]), d.get("corpus", "web"), "general", "web",
                         extract=text, source_id=str(d["id"])))
    return out


def expand(topics: list[Topic], backend, target: int, sampling: SamplingConfig, seed: int,
           per_call: int = 10, progress: bool = False) -> list[Topic]:
    """Ask the LLM for subtopics of the seeds (round-robin) until `target` distinct topics.

    Each round asks once per seed topic; stops when the target is reached or a round adds
    nothing new (a small model runs dry).
    """
    template = data_file("templates.yaml")["expand_topics"]
    out = dedup(list(topics))
    seeds = [t for t in topics if t.origin in ("seed", "user")]
    rnd = 0
    while len(out) < target and seeds:
        prompts = [template.format(n=per_call, topic=t.name, subject=t.subject) for t in seeds]
        comps = backend.generate(prompts, sampling, progress=progress,
                                 seeds=[seed * 1000 + rnd * len(seeds) + i for i in range(len(seeds))])
        failed = [c.error for c in comps if c.finish_reason == "error"]
        if failed:  # not an empty answer: the topic list would depend on a transient failure
            raise RuntimeError(f"synth.expand_topics_to: {len(failed)} of {len(comps)} topic "
                               f"expansion requests failed (first: {failed[0]}); run the stage "
                               f"again (answered requests come from the request cache)")
        before = len(out)
        new = []
        for t, c in zip(seeds, comps):
            for line in c.text.splitlines():
                name = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip().strip('"*')
                if 3 <= len(name) <= 120:
                    new.append(Topic(name, t.subject, t.group, "llm"))
        out = dedup(out + new)[:target]
        rnd += 1
        if len(out) == before:
            break
    return out


def load_topics(cfg: SynthConfig, *, seed: int, backend=None, data_dir: Optional[str] = None,
                progress: bool = False) -> list[Topic]:
    """The topics of a run: the configured source, expanded by the LLM if asked."""
    if cfg.topics == "taxonomy":
        topics = seed_taxonomy()
    elif cfg.topics == "web":
        topics = [t for t in seed_taxonomy() if t.group == "code"]
        topics += web_topics(cfg, max(cfg.kinds.get("textbook", 0), 1), seed, data_dir)
    else:
        topics = user_topics(Path(cfg.topics))
    if cfg.expand_topics_to > len(topics):
        if backend is None:
            raise ValueError("synth.expand_topics_to needs a backend to expand the topics")
        sampling = SamplingConfig(max_new_tokens=200, temperature=cfg.sampling.temperature,
                                  top_p=cfg.sampling.top_p)
        topics = expand(topics, backend, cfg.expand_topics_to, sampling, seed, progress=progress)
    return topics
