"""Generated preference pairs: two samples per prompt from the model being aligned (the SFT
model), ranked by the judge with FastChat's pairwise rubric, asked in both orders.

A pair is kept only when the two verdicts agree (A then B once swapped, or B then A): a tie
(`[[C]]`), verdicts that flip with the order (position bias: `inconsistent`), a reply with no
verdict (`unparsed`), two identical samples (`identical_samples`), an empty sample or a
backend error are recorded with that status and counted, never kept.

One record per prompt in `generated_pairs/` (`ShardedJsonlWriter` keyed by the prompt id),
written as each batch is judged: an interrupted run resumes at the next prompt and writes no
prompt twice; records of another fingerprint (another SFT model, judge or sampling) are
removed first, never mixed in.
"""
from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from typing import Optional

from phi_lib.io import ShardedJsonlWriter, atomic_write_json, read_json, read_keyed
from phi_lib.posttrain import judging
from phi_lib.provenance import Fingerprint

STATUSES = ("kept", "tie", "inconsistent", "unparsed", "identical_samples", "empty_sample",
            "backend_error")


def sample_seed(run_seed: int, prompt_id: str, k: int) -> int:
    return zlib.crc32(f"{run_seed}-{prompt_id}-sample{k}".encode()) & 0x7FFFFFFF


def question_text(prompt: list[dict]) -> str:
    """The judge's `[User Question]`: the user turn, after the earlier turns if any."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def outcome(v_ab: Optional[str], v_ba: Optional[str]) -> tuple[str, Optional[int]]:
    """(status, index of the better sample) from the verdicts on (s0, s1) and on (s1, s0)."""
    if v_ab is None or v_ba is None:
        return "unparsed", None
    if v_ab == "A" and v_ba == "B":
        return "kept", 0
    if v_ab == "B" and v_ba == "A":
        return "kept", 1
    if v_ab == "C" and v_ba == "C":
        return "tie", None
    return "inconsistent", None


def reset_if_stale(folder: Path, fp: Fingerprint) -> bool:
    marker = Path(folder) / "fingerprint.json"
    stale = marker.is_file() and read_json(marker).get("key") != fp.key
    if stale:
        shutil.rmtree(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, fp.to_dict())
    return stale


def generate(prompts: list[dict], policy, judge, pc, out_dir: Path, fp: Fingerprint, *,
             run_seed: int, batch_size: int = 8, data_dir: Optional[str] = None,
             progress: bool = True) -> list[dict]:
    """Sample, judge and record every prompt (`{id, prompt}`) not done yet; returns the
    records of `prompts` in order. `policy` and `judge` are shared backends."""
    pref = pc.preference
    reset_if_stale(out_dir, fp)
    writer = ShardedJsonlWriter(out_dir, "pairs", 1000, "id")
    todo = [p for p in prompts if not writer.has(p["id"])]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="generated pairs")
    with writer:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            samples = [policy.generate([p["prompt"] for p in batch], pref.sampling,
                                       seeds=[sample_seed(run_seed, p["id"], k) for p in batch])
                       for k in (0, 1)]
            recs = [_record(p, samples[0][i], samples[1][i], fp) for i, p in enumerate(batch)]
            _judge([r for r in recs if r["status"] is None], judge, pref, data_dir)
            for r in recs:
                writer.write(r)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return read_keyed(out_dir, "id", [p["id"] for p in prompts])


def _record(p: dict, c0, c1, fp: Fingerprint) -> dict:
    texts = [c0.text.strip(), c1.text.strip()]
    status = ("backend_error" if c0.error or c1.error else
              "empty_sample" if not all(texts) else
              "identical_samples" if texts[0] == texts[1] else None)
    return {"id": p["id"], "source": p.get("source", ""), "prompt": p["prompt"], "samples": texts,
            "finish_reasons": [c0.finish_reason, c1.finish_reason], "status": status,
            "verdicts": [], "judge_replies": [], "better": None, "fingerprint": fp.key}


def _judge(recs: list[dict], judge, pref, data_dir) -> None:
    if not recs:
        return
    fmt = pref.judge_format
    asks = []
    for r in recs:
        q, (a, b) = question_text(r["prompt"]), r["samples"]
        asks += [judging.pair_prompt(q, a, b, fmt, data_dir), judging.pair_prompt(q, b, a, fmt, data_dir)]
    replies = judge.generate(asks, pref.judge_sampling, chat=fmt == "chat")
    for i, r in enumerate(recs):
        ab, ba = replies[2 * i], replies[2 * i + 1]
        r["judge_replies"] = [ab.text, ba.text]
        r["verdicts"] = [judging.parse_verdict(ab.text, fmt), judging.parse_verdict(ba.text, fmt)]
        r["status"], r["better"] = ("backend_error", None) if ab.error or ba.error else \
            outcome(*r["verdicts"])


def as_pair(rec: dict) -> dict:
    """A kept record as a DPO pair (TRL's conversational format)."""
    win = rec["better"]
    return {"id": f"generated/{rec['id']}", "source": "generated", "prompt": rec["prompt"],
            "chosen": [{"role": "assistant", "content": rec["samples"][win]}],
            "rejected": [{"role": "assistant", "content": rec["samples"][1 - win]}]}
