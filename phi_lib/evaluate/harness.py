"""Run benchmark tasks on one model and write `results.json` plus per-item samples.

    from phi_lib.evaluate import evaluate_model
    res = evaluate_model("smollm2", ["arc_easy", "piqa"], out_dir="outputs/x", limit=20)
    res["results"]["arc_easy"]["acc_norm"]

Layout of `out_dir`: `results.json` (`results[task][metric]` with `<metric>_stderr`, model,
n, config hash, timings), `samples/<task>.jsonl` (prompt, choices, log-likelihoods,
prediction, gold, ...). Each finished task is kept under `tasks/<task>.json` with the
fingerprint of what produced it, so an interrupted run resumes at the next task and a
changed setting reruns only what it affects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from phi_lib import sandbox
from phi_lib.config import ALL_TASKS, EvaluateConfig
from phi_lib.evaluate.data import load_task
from phi_lib.evaluate.generation import SANDBOX_KEY, evaluate_generation, runs_programs
from phi_lib.evaluate.multiple_choice import evaluate_multiple_choice
from phi_lib.evaluate.prompts import MC_PROMPTS
from phi_lib.io import ReadStats, atomic_open, atomic_write_json, read_json, versions

log = logging.getLogger(__name__)

HEADLINE = {"winogrande": "acc", "arc_easy": "acc", "arc_challenge": "acc", "boolq": "acc",
            "siqa": "acc", "piqa": "acc", "hellaswag": "acc", "openbookqa": "acc",
            "mmlu": "acc", "squad": "exact_match", "gsm8k": "exact_match",
            "humaneval": "pass@1", "mbpp": "pass@1"}
"""The metric of each task in the phi-1.5 table."""


def settings_of(cfg: EvaluateConfig) -> dict:
    """The settings that change a task's numbers (model and task list excluded)."""
    d = dataclasses.asdict(cfg)
    for k in ("model", "reference_models", "tasks", "device"):
        d.pop(k, None)
    return d


def fingerprint(model: str, task: str, settings: dict) -> str:
    blob = json.dumps({"model": model, "task": task, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_model(model: str, tasks: Sequence[str], out_dir: Union[str, Path], *,
                   cfg: Optional[EvaluateConfig] = None, limit: Optional[int] = None,
                   run_dir: Optional[Union[str, Path]] = None, data_dir: Optional[str] = None,
                   loaded=None, progress: bool = True, skip_missing: bool = True,
                   force: bool = False, tokenizer: Optional[str] = None) -> dict:
    """Evaluate `model` (any workbook model name) on `tasks`; write and return results.

    `cfg` gives the settings (defaults: the paper's); `limit` overrides `cfg.limit`.
    `tokenizer`: the workbook tokenizer of a checkpoint folder without tokenizer files
    (`model.tokenizer`; stage 05's checkpoints carry theirs).
    `loaded` = an already loaded (model, tokenizer). A task whose data is not available
    (e.g. SQuAD offline) is recorded under `skipped` with the reason when `skip_missing`.
    """
    from phi_lib.paths import MissingDataError

    cfg = dataclasses.replace(cfg or EvaluateConfig(), tasks=list(tasks))
    if limit is not None:
        cfg.limit = limit
    cfg.check()
    out = Path(out_dir)
    settings = settings_of(cfg)
    if any(runs_programs(t, cfg.gsm8k_mode) for t in cfg.tasks):  # fail before loading the model
        sandbox.require(cfg.sandbox_isolation, SANDBOX_KEY)
    lm, tok = loaded or _load(model, cfg, run_dir, data_dir, tokenizer)
    results, timings, counts, skipped, corrupt = {}, {}, {}, {}, {}
    for task in cfg.tasks:
        fp = fingerprint(model, task, settings)
        done = out / "tasks" / f"{task}.json"
        if not force and done.is_file() and read_json(done).get("fingerprint") == fp:
            rec = read_json(done)
            log.info("%s: up to date, reusing %s", task, done)
        else:
            stats = ReadStats()
            try:
                docs = load_task(task, cfg.limit, stats, data_dir)
            except MissingDataError as e:
                if not skip_missing:
                    raise
                log.warning("%s: skipped: %s", task, e)
                skipped[task] = str(e)
                continue
            t0 = time.perf_counter()
            metrics, samples = run_task(lm, tok, task, docs, cfg, data_dir, progress)
            rec = {"fingerprint": fp, "metrics": metrics, "time_s": time.perf_counter() - t0,
                   "corrupt": stats.n_corrupt, "corrupt_first": stats.corrupt[:3]}
            with atomic_open(out / "samples" / f"{task}.jsonl", "w", encoding="utf-8") as f:
                for s in samples:
                    f.write(json.dumps(s, ensure_ascii=False, default=float) + "\n")
            atomic_write_json(done, rec)
        results[task], timings[task] = rec["metrics"], rec["time_s"]
        counts[task], corrupt[task] = rec["metrics"]["n"], rec["corrupt"]
        if rec["corrupt"]:
            log.warning("%s: %d corrupt records (first: %s)", task, rec["corrupt"],
                        rec["corrupt_first"][:1])
    doc = {"model": model, "config_hash": hashlib.sha256(json.dumps(
               settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
           "settings": settings, "limit": cfg.limit, "results": results, "n": counts,
           "skipped": skipped, "corrupt": corrupt, "time_s": timings,
           "items_per_s": {t: counts[t] / timings[t] for t in results if timings[t] > 0},
           "versions": versions(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "results.json", doc)
    return doc


def run_task(lm, tok, task: str, docs: list[dict], cfg: EvaluateConfig,
             data_dir: Optional[str] = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, samples) of one task on loaded docs."""
    if task not in ALL_TASKS:
        raise KeyError(f"unknown task {task!r}; tasks are {', '.join(ALL_TASKS)}")
    if task in MC_PROMPTS:
        return evaluate_multiple_choice(lm, tok, task, docs, batch_size=cfg.batch_size,
                                        mmlu_shots=cfg.mmlu_shots, data_dir=data_dir,
                                        progress=progress)
    return evaluate_generation(lm, tok, task, docs, gsm8k_mode=cfg.gsm8k_mode,
                               n_samples=cfg.n_samples, pass_k=cfg.pass_k,
                               temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                               batch_size=cfg.batch_size, timeout_s=cfg.timeout_s,
                               sandbox_isolation=cfg.sandbox_isolation, progress=progress)


def _load(model: str, cfg: EvaluateConfig, run_dir, data_dir, tokenizer=None):
    from phi_lib.hf_models import load_causal_lm

    return load_causal_lm(model, device=cfg.device, dtype=cfg.dtype, run_dir=run_dir,
                          data_dir=data_dir, tokenizer=tokenizer)


def headline(results: dict) -> dict[str, float]:
    """`task/metric` -> value for every numeric task metric (flat, for manifests)."""
    flat = {}
    for task, m in results.get("results", {}).items():
        for k, v in m.items():
            if isinstance(v, (int, float)) and k != "n":
                flat[f"{task}/{k}"] = float(v)
    return flat
