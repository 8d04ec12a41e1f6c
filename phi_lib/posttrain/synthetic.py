"""Synthetic SFT conversations in the Phi-3 SFT domains, written by a generator backend.

Diversity comes as in stage 01: each conversation is a (category, topic) drawn in turn from
`data/chat_prompts.yaml`. The generator first writes the user's message from the category's
instruction, then answers it under the category's system prompt (the scaffold is not stored:
the trained model learns to answer that way unprompted, e.g. its identity, or to decline
harmful requests); each further turn is a follow-up question, then its answer.

Every record keeps its provenance (category, topic, generator, sampling, seeds, finish
reasons, the fingerprint key) and passes the filters below, cheap first; a dropped one is
kept in `synthetic_dropped/` with its reason:
`backend_error`, `truncated`, `too_short`, `repetition`, `contaminated` (a benchmark n-gram,
MT-bench included), `near_duplicate` (MinHash against the kept ones).

Records are written after each backend call (`ShardedJsonlWriter`): an interrupted run
resumes at the first missing id; records made with another fingerprint are never mixed in
(the folders are reset when the fingerprint changes).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Optional

import yaml

from phi_lib.io import ShardedJsonlWriter, atomic_write_json, read_json, read_jsonl_folder
from phi_lib.provenance import Fingerprint

PROMPTS_FILE = Path(__file__).parent / "data" / "chat_prompts.yaml"
_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def prompts() -> dict:
    return yaml.safe_load(PROMPTS_FILE.read_text())


def specs(categories: list[str], n: int) -> list[dict]:
    """`n` conversation specs, categories in turn, each category's topics in turn."""
    out = []
    for i in range(n):
        cat = categories[i % len(categories)]
        topics = prompts()[cat]["topics"]
        out.append({"id": f"{cat}-{i:05d}", "category": cat,
                    "topic": topics[(i // len(categories)) % len(topics)]})
    return out


def seed_of(run_seed: int, rec_id: str, turn: int, part: str) -> int:
    return zlib.crc32(f"{run_seed}-{rec_id}-{turn}-{part}".encode()) & 0x7FFFFFFF


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (the repetition filter of stage 01,
    phi_lib/synth/quality.py: a stage may not import another stage's package)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return sum(c - 1 for c in Counter(grams).values()) / len(grams) if grams else 0.0


def _clean(text: str) -> str:
    """A generated user message without wrapping quotes or a `Question:` label."""
    text = text.strip().strip('"').strip()
    return re.sub(r"^(question|request|message|problem|puzzle)\s*:\s*", "", text, flags=re.I).strip()


class ChatSynthesizer:
    """Generates, filters and writes synthetic conversations into `out/synthetic[_dropped]/`."""

    def __init__(self, sc, out: Path, backend, fingerprint: Fingerprint, *, run_seed: int,
                 data_dir: Optional[str] = None):
        self.sc, self.out, self.backend, self.fp = sc, Path(out), backend, fingerprint
        self.run_seed, self.data_dir = run_seed, data_dir
        self.kept_dir, self.dropped_dir = self.out / "synthetic", self.out / "synthetic_dropped"
        self._benchmarks = None

    def reset_if_stale(self) -> bool:
        """Remove records another fingerprint made; True if there were any."""
        marker = self.out / "synthetic_fingerprint.json"
        stale = marker.is_file() and read_json(marker).get("key") != self.fp.key
        if stale:
            shutil.rmtree(self.kept_dir, ignore_errors=True)
            shutil.rmtree(self.dropped_dir, ignore_errors=True)
        atomic_write_json(marker, self.fp.to_dict())
        return stale

    def benchmarks(self):
        if self._benchmarks is None:
            from phi_lib.decontaminate import BenchmarkNgrams
            from phi_lib.hf_models import cache_dir

            self._benchmarks = BenchmarkNgrams.build(
                list(self.sc.decontaminate_against), self.sc.decontaminate_ngram,
                data_dir=self.data_dir, cache_dir=cache_dir() / "decontaminate",
                key="posttrain.synthetic.decontaminate_against")
        return self._benchmarks

    def run(self, todo_specs: list[dict], progress: bool = True) -> list[dict]:
        """Generate the specs not on disk yet; returns the kept records of `todo_specs`."""
        from phi_lib.dedup import MinHashDedup

        self.reset_if_stale()
        kept = ShardedJsonlWriter(self.kept_dir, "shard", 1000, "id")
        dropped = ShardedJsonlWriter(self.dropped_dir, "shard", 1000, "id")
        self.near = MinHashDedup(self.sc.dedup_threshold)
        for rec in read_jsonl_folder(self.kept_dir):  # resume: dedup against what is kept
            self.near.duplicate_of(rec["id"], _text(rec["messages"]))
        todo = [s for s in todo_specs if not kept.has(s["id"]) and not dropped.has(s["id"])]
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="synthetic conversations", unit="conv")
        with kept, dropped:
            step = self.sc.batch_prompts
            for start in range(0, len(todo), step):
                for rec in self._generate(todo[start:start + step]):
                    (dropped if rec.get("drop_reason") else kept).write(rec)
                if bar is not None:
                    bar.update(len(todo[start:start + step]))
        if bar is not None:
            bar.close()
        wanted = {s["id"] for s in todo_specs}
        return [r for r in read_jsonl_folder(self.kept_dir) if r["id"] in wanted]

    # ------------------------------------------------------------------ generation
    def _generate(self, batch: list[dict]) -> list[dict]:
        sc, p = self.sc, prompts()
        recs = [{**s, "messages": [], "finish_reasons": [], "seeds": [], "errors": [],
                 "system_prompt": p[s["category"]]["system"].format(assistant_name=sc.assistant_name)}
                for s in batch]
        for turn in range(sc.turns):
            live = [r for r in recs if not r["errors"]]
            asks = [p[r["category"]]["ask"].format(topic=r["topic"]) if turn == 0 else
                    p["follow_up"].format(conversation=_transcript(r["messages"])) for r in live]
            self._call(live, asks, turn, "user")
            live = [r for r in live if not r["errors"]]
            chats = [[{"role": "system", "content": r["system_prompt"]}] + r["messages"] for r in live]
            self._call(live, chats, turn, "assistant")
        return [self._filter(self._provenance(r)) for r in recs]

    def _call(self, recs: list[dict], prompts_: list, turn: int, role: str) -> None:
        seeds = [seed_of(self.run_seed, r["id"], turn, role) for r in recs]
        comps = self.backend.generate(prompts_, self.sc.sampling, seeds=seeds)
        for r, c, s in zip(recs, comps, seeds):
            text = _clean(c.text) if role == "user" else c.text.strip()
            r["messages"].append({"role": role, "content": text})
            r["finish_reasons"].append(c.finish_reason)
            r["seeds"].append(s)
            if c.error:
                r["errors"].append(c.error)

    def _provenance(self, rec: dict) -> dict:
        rec.update(source="synthetic", backend=self.backend.name, model=self.backend.model,
                   sampling=dataclasses.asdict(self.sc.sampling), fingerprint=self.fp.key)
        return rec

    def _filter(self, rec: dict) -> dict:
        """Set `drop_reason` (and `drop_detail`) when a filter fails, cheap first."""
        sc, msgs = self.sc, rec["messages"]
        reason, detail = None, ""
        if rec["errors"]:
            reason, detail = "backend_error", rec["errors"][0]
        elif sc.drop_truncated and "length" in rec["finish_reasons"][1::2]:
            reason = "truncated"
        elif any(len(m["content"].strip()) < sc.min_chars for m in msgs):
            reason = "too_short"
        elif repeated_ngram_fraction(_text(msgs)) > sc.max_repeated_ngrams:
            reason = "repetition"
        elif sc.decontaminate_against and (bench := self.benchmarks().match(_text(msgs))):
            reason, detail = "contaminated", bench
        else:  # last: only a conversation that passed everything enters the dedup index
            dup = self.near.duplicate_of(rec["id"], _text(msgs))
            if dup is not None:
                reason, detail = "near_duplicate", dup
        if reason:
            rec["drop_reason"], rec["drop_detail"] = reason, detail
        return rec


def _text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def _transcript(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def read_dropped(out: Path) -> list[dict]:
    return list(read_jsonl_folder(Path(out) / "synthetic_dropped"))
