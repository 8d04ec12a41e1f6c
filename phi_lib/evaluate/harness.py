"""Run benchmark tasks on one model and write `results.json` plus per-item samples.

    from phi_lib.evaluate import evaluate_model
    res = evaluate_model("smollm2", ["arc_easy", "piqa"], out_dir="outputs/x", limit=20)
    res["results"]["arc_easy"]["acc_norm"]

Layout of `out_dir`: `results.json` (`results[task][metric]` with `<metric>_stderr`, model,
its content identity, n, each task's fingerprint, timings), `samples/<task>.jsonl` (prompt,
choices, log-likelihoods, prediction, gold, ...; each line with its task's fingerprint key).
Each finished task is kept under `tasks/<task>.json` with the fingerprint of what produced it
(`task_fingerprint`: the settings that task depends on, the model's content identity, the
digests of its benchmark files), so an interrupted run resumes at the next task, and a changed
setting, a retrained checkpoint or a changed data file recomputes only the tasks it affects.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from phi_lib import sandbox
from phi_lib.config import KNOWN_TASKS, EvaluateConfig
from phi_lib.evaluate.data import load_task, task_files
from phi_lib.evaluate.generation import SANDBOX_KEY, SPECS, evaluate_generation, runs_programs
from phi_lib.evaluate.multiple_choice import evaluate_multiple_choice
from phi_lib.evaluate.prompts import MC_PROMPTS
from phi_lib.io import ReadStats, atomic_open, atomic_write_json, read_json, read_jsonl, versions
from phi_lib.provenance import Fingerprint, digest, is_current, path_digest, results_view

log = logging.getLogger(__name__)

HEADLINE = {"winogrande": "acc", "arc_easy": "acc", "arc_challenge": "acc", "boolq": "acc",
            "siqa": "acc", "piqa": "acc", "hellaswag": "acc", "openbookqa": "acc",
            "mmlu": "acc", "squad": "exact_match", "gsm8k": "exact_match",
            "humaneval": "pass@1", "mbpp": "pass@1", "commonsense_qa": "acc",
            "commonsense_qa_cloze": "acc_norm", "mmlu_cloze": "acc_norm"}
"""The metric of each task in the phi-1.5 table (cloze tasks: acc_norm, as FineWeb's)."""

SELECTION = ("model", "reference_models", "tasks", "curve_every", "curve_tasks", "curve_limit")
"""`evaluate` fields that choose what is evaluated, not the numbers of a task (a learning
curve's tasks are fingerprinted with `curve_limit` as their `limit`: `curve.py`)."""


def task_settings(cfg: EvaluateConfig, task: str) -> dict:
    """The result-affecting `evaluate` settings the numbers of `task` depend on (operational
    ones, like `batch_size`, never; `dtype` as loaded, `auto` resolved): a change to another
    task's setting reruns only that task."""
    names = ["limit", "dtype"]
    if task == "mmlu":
        names.append("mmlu_shots")
    if task not in MC_PROMPTS:  # generation
        names += ["temperature", "max_new_tokens"] + (["gsm8k_mode"] if task == "gsm8k" else [])
        if SPECS["gsm8k_cot" if task == "gsm8k" and cfg.gsm8k_mode == "cot" else task].program:
            names += ["n_samples", "pass_k"]  # sampled programs, graded by pass@k
    from phi_lib.hf_models import effective_dtype

    view = {**results_view(cfg), "dtype": effective_dtype(cfg.dtype, cfg.device),
            "limit": cfg.limit_for(task)}
    return {k: view[k] for k in names}


def task_fingerprint(task: str, cfg: EvaluateConfig, model_id: str,
                     data_dir: Optional[str] = None) -> Fingerprint:
    """What a task result of a model is made of: the task's settings, the model's content
    identity (`hf_models.model_identity`), the digests of the task's benchmark files."""
    files = {f"data.{role}": path_digest(p) if p is not None else "missing (hub)"
             for role, p in task_files(task, data_dir).items()}
    return Fingerprint.of(config={"task": task, "evaluate": task_settings(cfg, task)},
                          inputs={"model": model_id, **files})


def evaluate_model(model: str, tasks: Sequence[str], out_dir: Union[str, Path], *,
                   cfg: Optional[EvaluateConfig] = None, limit: Optional[int] = None,
                   run_dir: Optional[Union[str, Path]] = None, data_dir: Optional[str] = None,
                   loaded=None, progress: bool = True, skip_missing: bool = True,
                   force: bool = False, tokenizer: Optional[str] = None) -> dict:
    """Evaluate `model` (any workbook model name) on `tasks`; write and return results.

    `cfg` gives the settings (defaults: the paper's); `limit` overrides `cfg.limit`.
    `tokenizer`: the workbook tokenizer of a checkpoint folder without tokenizer files
    (`model.tokenizer`; stage 05's checkpoints carry theirs).
    `loaded` = an already loaded (model, tokenizer) of `model`; otherwise the model is loaded
    only if some task is not current. A task whose data is not available (e.g. SQuAD offline)
    is recorded under `skipped` with the reason when `skip_missing`. The folder keeps the
    records of these tasks only: those of other tasks (or skipped ones) are removed.
    """
    from phi_lib.hf_models import model_identity
    from phi_lib.paths import MissingDataError

    cfg = dataclasses.replace(cfg or EvaluateConfig(), tasks=list(tasks))
    if limit is not None:  # the one cap of every task
        cfg.limit, cfg.task_limits = limit, {}
    cfg.check()
    out = Path(out_dir)
    if any(runs_programs(t, cfg.gsm8k_mode) for t in cfg.tasks):  # fail before loading the model
        sandbox.require(cfg.sandbox_isolation, SANDBOX_KEY)
    model_id = model_identity(model, run_dir, data_dir)
    lm = [loaded]  # loaded on first need
    results, timings, counts, skipped, corrupt, fps, computed = {}, {}, {}, {}, {}, {}, []
    for task in cfg.tasks:
        fp = task_fingerprint(task, cfg, model_id, data_dir)
        rec = None if force else current_record(out, task, fp)
        if rec is not None:
            log.info("%s: up to date, reusing %s", task, out / "tasks" / f"{task}.json")
        else:
            stats = ReadStats()
            try:
                docs = load_task(task, cfg.limit_for(task), stats, data_dir)
            except MissingDataError as e:
                if not skip_missing:
                    raise
                log.warning("%s: skipped: %s", task, e)
                skipped[task] = str(e)
                continue
            lm[0] = lm[0] or _load(model, cfg, run_dir, data_dir, tokenizer)
            t0 = time.perf_counter()
            metrics, samples = run_task(*lm[0], task, docs, cfg, data_dir, progress)
            rec = {"fingerprint": fp.to_dict(), "metrics": metrics,
                   "time_s": time.perf_counter() - t0, "corrupt": stats.n_corrupt,
                   "corrupt_first": stats.corrupt[:3]}
            with atomic_open(out / "samples" / f"{task}.jsonl", "w", encoding="utf-8") as f:
                for s in samples:
                    f.write(json.dumps({**s, "fingerprint": fp.key}, ensure_ascii=False,
                                       default=float) + "\n")
            atomic_write_json(out / "tasks" / f"{task}.json", rec)  # last: the task is done
            computed.append(task)
        results[task], timings[task] = rec["metrics"], rec["time_s"]
        counts[task], corrupt[task] = rec["metrics"]["n"], rec["corrupt"]
        fps[task] = rec["fingerprint"]
        if rec["corrupt"]:
            log.warning("%s: %d corrupt records (first: %s)", task, rec["corrupt"],
                        rec["corrupt_first"][:1])
    _remove_other_tasks(out, keep=set(results))
    doc = {"model": model, "model_identity": model_id,
           "config_hash": digest({t: fp["key"] for t, fp in fps.items()}),
           "settings": {k: v for k, v in results_view(cfg).items() if k not in SELECTION},
           "limit": cfg.limit, "results": results, "n": counts, "skipped": skipped,
           "corrupt": corrupt, "time_s": timings, "fingerprints": fps, "computed": computed,
           "reused": [t for t in results if t not in computed],
           "items_per_s": {t: counts[t] / timings[t] for t in results if timings[t] > 0},
           "versions": versions(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "results.json", doc)
    return doc


def current_record(out: Path, task: str, fp: Fingerprint) -> Optional[dict]:
    """The finished record of `task` under `out` if `fp` made it and its samples file is
    whole and made by it too; else None (the task is recomputed)."""
    try:
        rec = read_json(out / "tasks" / f"{task}.json")
    except (OSError, ValueError):
        return None
    if not isinstance(rec.get("fingerprint"), dict) or not is_current(rec["fingerprint"], fp):
        return None
    stats = ReadStats()
    path = out / "samples" / f"{task}.jsonl"
    keys = [s.get("fingerprint") for s in read_jsonl(path, stats)] if path.is_file() else []
    if stats.n_corrupt or len(keys) != rec["metrics"]["n"] or any(k != fp.key for k in keys):
        return None
    return rec


def _remove_other_tasks(out: Path, keep: set[str]) -> None:
    """Records of tasks not in this evaluation would outlive the config that made them."""
    for pattern in ("tasks/*.json", "samples/*.jsonl"):
        for path in out.glob(pattern):
            if path.stem not in keep:
                log.info("removing %s (task not evaluated now)", path)
                path.unlink()


def run_task(lm, tok, task: str, docs: list[dict], cfg: EvaluateConfig,
             data_dir: Optional[str] = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, samples) of one task on loaded docs."""
    if task not in KNOWN_TASKS:
        raise KeyError(f"unknown task {task!r}; tasks are {', '.join(KNOWN_TASKS)}")
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
