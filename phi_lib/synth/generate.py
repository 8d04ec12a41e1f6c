"""Stage-01 generation: prompts -> backend -> raw completions in `.generated/<kind>/`.

A raw record is its prompt spec's fields, the completion as the backend returned it, and
what produced it: `fingerprint` (the generation fingerprint's key: backend identity,
sampling, seed; phi_lib.synth.fingerprints). On a rerun the store is first pruned of every
record that is stale (another fingerprint, or another prompt for its id) or no longer asked
for (fewer samples, a kind removed); then only the missing ids are asked, so an interrupted
run resumes without losing or duplicating a record, and a changed knob never leaves an old
completion behind.

A request that failed (timeout, 429/5xx, connection error, malformed reply, after the
backend's own retries) is no result: it is not written, the session counts it, and the next
run asks it again.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from phi_lib.io import ReadStats, ShardedJsonlWriter, read_jsonl_folder
from phi_lib.synth.fingerprints import completion_hash
from phi_lib.synth.prompts import KINDS, PromptSpec
from phi_lib.synth.quality import extract_code

GENERATED = ".generated"
"""Raw completions, one record per prompt id (a dot-folder: corpus readers skip it)."""
DROPPED = ".dropped"
"""Samples the quality filters dropped, with the reason (`<kind>/` beside it: kept ones)."""


def record_seed(run_seed: int, record_id: str) -> int:
    """The sampling seed of one record: stable, distinct per record."""
    return zlib.crc32(f"{run_seed}:{record_id}".encode()) & 0x7FFFFFFF


@dataclass
class GenerationRun:
    """What one generation session did, per kind."""

    asked: dict[str, int] = field(default_factory=dict)
    """Prompts sent to the backend (missing or stale ids)."""
    written: dict[str, int] = field(default_factory=dict)
    """Completions written to the raw store."""
    reused: dict[str, int] = field(default_factory=dict)
    """Current records already in the store (not asked again)."""
    removed: dict[str, int] = field(default_factory=dict)
    """Stale or no longer asked-for records pruned from the store (and from kept/dropped)."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(id, error) of the requests that failed: asked again on the next run."""
    new_tokens: int = 0
    """Completion tokens generated this session (cache misses)."""
    cached: int = 0
    """Completions the request cache served."""
    seconds: float = 0.0
    corrupt: int = 0
    """Unreadable lines met in the store (torn writes of a killed run), dropped by pruning."""

    def rows(self) -> list[dict]:
        """One row per kind: reused, stale removed, asked, written, failed."""
        kinds = sorted(set(self.asked) | set(self.reused) | set(self.removed))
        errs = {k: sum(1 for i, _ in self.errors if i.startswith(f"{k}-")) for k in kinds}
        return [{"kind": k, "reused": self.reused.get(k, 0), "stale removed": self.removed.get(k, 0),
                 "asked": self.asked.get(k, 0), "written": self.written.get(k, 0),
                 "failed (asked again next run)": errs[k]} for k in kinds]


def raw_record(spec: PromptSpec, c, *, fingerprint: str, backend, sampling, run_seed: int) -> dict:
    rec = spec.fields()
    rec.update(completion=c.text, finish_reason=c.finish_reason, backend=backend.name,
               model=backend.model, sampling=dataclasses.asdict(sampling),
               sample_seed=record_seed(run_seed, spec.id), prompt_tokens=c.prompt_tokens,
               completion_tokens=c.completion_tokens, fingerprint=fingerprint,
               completion_hash=completion_hash(c.text, c.finish_reason))
    return rec


def sample_record(raw: dict) -> dict:
    """The sample the filters judge and stage 03 trains on: `text` is the completion without
    surrounding space, for exercises its code; only exercises keep the raw `completion`."""
    rec = dict(raw)
    completion = rec.pop("completion")
    if rec["kind"] == "code_exercises":
        rec["text"], rec["completion"] = extract_code(completion), completion
    else:
        rec["text"] = completion.strip()
    return rec


def generate(specs: list[PromptSpec], backend: Callable, *, folder: Path, fingerprint: str,
             cfg, is_current: Callable[[dict], bool], progress: bool = True,
             also_prune: tuple[Path, ...] = ()) -> GenerationRun:
    """Fill `folder/<kind>/` with one current raw record per spec.

    `backend` is called (no argument) only if something must be generated, so a finished
    store never loads the model. `is_current(record)` decides what survives the pruning of
    the store and of the `also_prune` folders (the kept and dropped samples)."""
    run = GenerationRun()
    stats = ReadStats()
    size, step = cfg.synth.shard_size, cfg.synth.batch_prompts
    writers = {k: ShardedJsonlWriter(folder / k, "shard", size, "id")
               for k in KINDS if (folder / k).is_dir() or any(s.kind == k for s in specs)}
    for kind, w in writers.items():
        run.removed[kind] = w.prune(is_current, stats)
    for base in also_prune:  # the samples derived from stale records go with them
        for kind in KINDS:
            if (base / kind).is_dir():
                with ShardedJsonlWriter(base / kind, "shard", size, "id") as w:
                    w.prune(is_current, stats)
    todo = [s for s in specs if not writers[s.kind].has(s.id)]
    for s in specs:
        run.reused[s.kind] = run.reused.get(s.kind, 0) + writers[s.kind].has(s.id)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="synthesize", unit="sample")
    t0 = time.perf_counter()
    try:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            comps = backend().generate([s.prompt for s in chunk], cfg.synth.sampling,
                                       seeds=[record_seed(cfg.run.seed, s.id) for s in chunk])
            for s, c in zip(chunk, comps):
                run.asked[s.kind] = run.asked.get(s.kind, 0) + 1
                if c.finish_reason == "error":  # not a result: asked again next run
                    run.errors.append((s.id, c.error or "unknown error"))
                    continue
                writers[s.kind].write(raw_record(s, c, fingerprint=fingerprint,
                                                 backend=backend(), sampling=cfg.synth.sampling,
                                                 run_seed=cfg.run.seed))
                run.written[s.kind] = run.written.get(s.kind, 0) + 1
            run.new_tokens += sum(c.completion_tokens for c in comps if not c.cached)
            run.cached += sum(c.cached for c in comps)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{run.new_tokens / (time.perf_counter() - t0):.1f}",
                                failed=len(run.errors))
    finally:
        for w in writers.values():
            w.close()
        if bar is not None:
            bar.close()
    run.seconds = time.perf_counter() - t0
    run.corrupt = stats.n_corrupt
    return run


def read_samples(out: Path, kind: str, dropped: bool = False,
                 stats: Optional[ReadStats] = None) -> list[dict]:
    """The kept (or dropped) samples of a kind, in id order."""
    folder = Path(out) / (f"{DROPPED}/{kind}" if dropped else kind)
    return sorted(read_jsonl_folder(folder, stats), key=lambda r: r["id"])


def read_generated(out: Path, kind: str, stats: Optional[ReadStats] = None) -> list[dict]:
    """The raw records of a kind, in id order."""
    return sorted(read_jsonl_folder(Path(out) / GENERATED / kind, stats), key=lambda r: r["id"])
