"""Running stage 01: prompts -> backend -> quality filters -> sharded JSONL, resumably.

Kept samples go to `01_synthesize/<kind>/shard-NNNNN.jsonl` (what stage 03 trains on);
dropped ones, with the reason, to `01_synthesize/.dropped/<kind>/` (a dot-folder, so corpus
readers skip it). A record's id is `<kind>-<index>`; on a rerun every id already in either
folder is skipped, and the near-duplicate index is rebuilt from the kept samples on disk, so
an interrupted run resumes without losing or duplicating a record.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from phi_lib import sandbox
from phi_lib.config import Config
from phi_lib.io import ReadStats, ShardedJsonlWriter, read_jsonl_folder
from phi_lib.synth import quality
from phi_lib.synth.prompts import PromptSpec

DROPPED = ".dropped"


def record_seed(run_seed: int, record_id: str) -> int:
    """The sampling seed of one record: stable, distinct per record."""
    return zlib.crc32(f"{run_seed}:{record_id}".encode()) & 0x7FFFFFFF


@dataclass
class SynthSummary:
    """What a synthesis run holds on disk, per kind."""

    generated: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    """kind -> drop reason -> count."""
    tokens: dict[str, int] = field(default_factory=dict)
    """Completion tokens of the kept samples, per kind (generator's tokenizer)."""
    chars: dict[str, int] = field(default_factory=dict)
    corrupt: int = 0
    """Corrupt lines found in the output shards (reported, never silently skipped)."""
    cached: int = 0
    """Completions served by the request cache in this session."""
    seconds: float = 0.0
    """Generation wall time of this session."""
    new_tokens: int = 0
    """Completion tokens generated in this session (cache misses)."""

    def table(self):
        """Counts per kind as a DataFrame (kinds x generated/kept/drop reasons/tokens)."""
        import pandas as pd

        reasons = sorted({r for d in self.dropped.values() for r in d})
        rows = []
        for kind in self.generated:
            row = {"kind": kind, "generated": self.generated[kind], "kept": self.kept.get(kind, 0)}
            row.update({f"dropped: {r}": self.dropped.get(kind, {}).get(r, 0) for r in reasons})
            row["kept tokens"] = self.tokens.get(kind, 0)
            rows.append(row)
        return pd.DataFrame(rows).set_index("kind") if rows else pd.DataFrame()


class Synthesizer:
    """Generates, filters and writes the samples of a list of prompts."""

    def __init__(self, cfg: Config, out: Path, backend, *, benchmarks=None):
        self.cfg, self.scfg, self.out, self.backend = cfg, cfg.synth, Path(out), backend
        self.benchmarks = benchmarks
        """`phi_lib.decontaminate.BenchmarkNgrams` (built on first use when None)."""
        self.near = quality.NearDuplicates(self.scfg.dedup_threshold)

    # ------------------------------------------------------------------ outputs
    def kept_dir(self, kind: str) -> Path:
        return self.out / kind

    def dropped_dir(self, kind: str) -> Path:
        return self.out / DROPPED / kind

    def _writers(self, kinds) -> tuple[dict, dict]:
        size = self.scfg.shard_size
        kept = {k: ShardedJsonlWriter(self.kept_dir(k), "shard", size, "id") for k in kinds}
        dropped = {k: ShardedJsonlWriter(self.dropped_dir(k), "shard", size, "id") for k in kinds}
        return kept, dropped

    def _benchmarks(self):
        if self.benchmarks is None:
            from phi_lib.decontaminate import BenchmarkNgrams
            from phi_lib.hf_models import cache_dir

            self.benchmarks = BenchmarkNgrams.build(
                list(self.scfg.decontaminate_against), self.scfg.decontaminate_ngram,
                data_dir=self.cfg.run.data_dir, cache_dir=cache_dir() / "decontaminate",
                key="synth.decontaminate_against")
        return self.benchmarks

    # ------------------------------------------------------------------ run
    def run(self, specs: list[PromptSpec], progress: bool = True) -> SynthSummary:
        kinds = sorted({s.kind for s in specs}) or list(self.scfg.kinds)
        kept, dropped = self._writers(kinds)
        for kind in kinds:  # resume: later samples are deduplicated against the kept ones
            for rec in read_jsonl_folder(self.kept_dir(kind)):
                self.near.duplicate_of(kind, rec["id"], rec["text"])
        todo = [s for s in specs if not kept[s.kind].has(s.id) and not dropped[s.kind].has(s.id)]
        if self.scfg.check_exercises and any(s.kind == "code_exercises" for s in todo):
            sandbox.require(self.scfg.sandbox_isolation, quality.SANDBOX_KEY)  # before generating
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="synthesize", unit="sample")
        t0, new_tokens, cached = time.perf_counter(), 0, 0
        try:
            step = self.scfg.batch_prompts
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                comps = self.backend.generate(
                    [s.prompt for s in chunk], self.scfg.sampling,
                    seeds=[record_seed(self.cfg.run.seed, s.id) for s in chunk])
                records = [self._record(s, c) for s, c in zip(chunk, comps)]
                for rec in self._filter(records):
                    (dropped if rec.get("drop_reason") else kept)[rec["kind"]].write(rec)
                new_tokens += sum(c.completion_tokens for c in comps if not c.cached)
                cached += sum(c.cached for c in comps)
                if bar is not None:
                    bar.update(len(chunk))
                    bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - t0):.1f}",
                                    kept=sum(len(w) for w in kept.values()))
        finally:
            for w in list(kept.values()) + list(dropped.values()):
                w.close()
            if bar is not None:
                bar.close()
        summary = summarize(self.out, kinds)
        summary.cached, summary.new_tokens = cached, new_tokens
        summary.seconds = time.perf_counter() - t0
        return summary

    def _record(self, spec: PromptSpec, c) -> dict:
        rec = spec.fields()
        text = c.text.strip()
        if spec.kind == "code_exercises":
            rec["completion"] = c.text
            text = quality.extract_code(c.text)
        rec.update(text=text, backend=self.backend.name, model=self.backend.model,
                   sampling=dataclasses.asdict(self.scfg.sampling),
                   sample_seed=record_seed(self.cfg.run.seed, spec.id),
                   finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
                   completion_tokens=c.completion_tokens)
        if c.error:
            rec["error"] = c.error
        return rec

    def _filter(self, records: list[dict]) -> list[dict]:
        """Set `drop_reason` (and `drop_detail`) on the records that fail a filter."""
        cfg = self.scfg
        programs: dict[int, str] = {}
        for i, rec in enumerate(records):
            reason = (quality.check_truncated(rec["finish_reason"], cfg)
                      or quality.check_length(rec["text"], cfg)
                      or quality.check_repetition(rec["text"], cfg))
            if reason is None and rec["kind"] == "code_exercises":
                reason, programs[i] = quality.exercise_program(rec["text"], rec["function_name"])
                if reason and rec["finish_reason"] == "length":  # say why it is incomplete
                    reason, rec["drop_detail"] = "exercise_truncated", (
                        f"{reason}: the completion hit max_new_tokens "
                        f"({cfg.sampling.max_new_tokens}) before the exercise was complete")
            if reason is None and cfg.decontaminate_against:
                bench = self._benchmarks().match(rec["text"])
                if bench is not None:
                    reason, rec["drop_detail"] = "contaminated", bench
            if reason:
                rec["drop_reason"] = reason
                programs.pop(i, None)
        if cfg.check_exercises and programs:
            idx = sorted(programs)
            for i, (reason, detail) in zip(idx, quality.run_exercises([programs[i] for i in idx],
                                                                      cfg)):
                if reason:
                    records[i]["drop_reason"], records[i]["drop_detail"] = reason, detail
        for rec in records:  # last: only samples that pass everything enter the dedup index
            if not rec.get("drop_reason"):
                dup = self.near.duplicate_of(rec["kind"], rec["id"], rec["text"])
                if dup is not None:
                    rec["drop_reason"], rec["drop_detail"] = "near_duplicate", dup
        return records


def read_samples(out: Path, kind: str, dropped: bool = False,
                 stats: Optional[ReadStats] = None) -> list[dict]:
    """The kept (or dropped) records of a kind, in id order."""
    folder = Path(out) / (f"{DROPPED}/{kind}" if dropped else kind)
    return sorted(read_jsonl_folder(folder, stats),
                  key=lambda r: r["id"])


def summarize(out: Path, kinds) -> SynthSummary:
    """Counts, drop reasons and tokens per kind, read back from the shards on disk."""
    s = SynthSummary()
    stats = ReadStats()
    for kind in kinds:
        kept = read_samples(out, kind, stats=stats)
        drops = read_samples(out, kind, dropped=True, stats=stats)
        s.kept[kind] = len(kept)
        s.generated[kind] = len(kept) + len(drops)
        reasons: dict[str, int] = {}
        for r in drops:
            reasons[r.get("drop_reason", "unknown")] = reasons.get(r.get("drop_reason", "unknown"), 0) + 1
        s.dropped[kind] = reasons
        s.tokens[kind] = sum(int(r.get("completion_tokens", 0)) for r in kept)
        s.chars[kind] = sum(len(r["text"]) for r in kept)
    s.corrupt = stats.n_corrupt
    return s
