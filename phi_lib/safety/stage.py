"""Stage 07 as the notebook runs it: ToxiGen scores, probe completions, judge grades, the hand
grader, agreement, `results.json` and the manifest.

Outputs under `07_toxicity/`: `toxigen/<model>/<group>.jsonl` (perplexity per statement),
`toxigen.png`, `completions/<model>/` (one record per prompt), `grades_judge/`,
`grades_human.jsonl` (the hand grader's log), `results.json`, `manifest.json`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

from phi_lib.config import TOXIGEN_GROUPS, BackendConfig
from phi_lib.hf_models import model_identity, model_slug
from phi_lib.io import ReadStats, atomic_write_json, read_json, write_manifest
from phi_lib.safety import grader, judge, perplexity, probes, report, toxigen
from phi_lib.safety.safety_score import GroupScore, group_scores, mean_score


def check_models(cfg) -> dict[str, str]:
    """Model name -> identity, resolving every probed model before any work: `checkpoint`
    without a stage-05 checkpoint in this run fails here, saying what to do."""
    ids = {}
    for name in cfg.toxicity.models:
        try:
            ids[name] = model_identity(name, cfg.run_dir)
        except FileNotFoundError as e:
            if name != "checkpoint":
                raise
            raise FileNotFoundError(
                f"toxicity.models: 'checkpoint' is the last checkpoint of stage 05 in run "
                f"{cfg.run.name!r}, and there is none ({e}). Run stage 05 first (python -m "
                f"phi_lib run <params> --stages 05), or probe other models "
                f"(--set toxicity.models=smollm2).") from None
    return ids


def _load(name: str, cfg):
    from phi_lib.hf_models import load_causal_lm

    tc = cfg.toxicity
    return lambda: load_causal_lm(name, device=tc.device, dtype=tc.dtype, run_dir=cfg.run_dir,
                                  data_dir=cfg.run.data_dir, tokenizer=cfg.model.tokenizer)


# ----------------------------------------------------------------------------- ToxiGen
def toxigen_scores(cfg, out: Path, progress: bool = True) -> dict[str, dict[str, GroupScore]]:
    """Safety score per group for every model in `toxicity.models`."""
    tc = cfg.toxicity
    ids = check_models(cfg)
    statements = toxigen.sample_statements(tc.groups or TOXIGEN_GROUPS, tc.per_group,
                                           cfg.run.seed, cfg.run.data_dir)
    scores, stats = {}, ReadStats()
    for name in tc.models:
        recs = perplexity.score_statements(
            ids[name], statements, Path(out) / "toxigen" / model_slug(name), _load(name, cfg),
            batch_size=tc.batch_size, progress=progress, stats=stats, name=name)
        scores[name] = group_scores(recs, tc.alpha)
    if stats.n_corrupt:
        print(f"toxigen cache: {stats.summary()} (rescored)")
    return scores


# ----------------------------------------------------------------------------- probes
def prompts(cfg) -> list[dict]:
    return probes.select_prompts(probes.load_prompts(), cfg.toxicity.probe_limit)


def complete_probes(cfg, out: Path, progress: bool = True) -> list[dict]:
    """Each model's completion of each selected prompt (resumes; a retrained `checkpoint`
    starts over, as its old completions are another model's)."""
    from phi_lib.backends import get_backend

    tc = cfg.toxicity
    ids = check_models(cfg)
    selected = prompts(cfg)
    records = []
    for name in tc.models:
        folder = Path(out) / "completions" / model_slug(name)
        _reset_if_other_model(folder, ids[name])
        bc = BackendConfig(kind="transformers", model=name, batch_size=tc.batch_size,
                           device=tc.device, dtype=tc.dtype, cache=False)
        with get_backend(bc, run_dir=cfg.run_dir, data_dir=cfg.run.data_dir) as backend:
            records += probes.complete(backend, name, selected, tc.sampling, folder,
                                       run_seed=cfg.run.seed, batch_size=tc.batch_size,
                                       progress=progress)
    return records


def _reset_if_other_model(folder: Path, identity: str) -> None:
    marker = folder / "model.json"
    if marker.is_file() and read_json(marker).get("identity") != identity:
        shutil.rmtree(folder)
    if not marker.is_file():
        atomic_write_json(marker, {"identity": identity})


def completions_table(completions: list[dict], n: int = 6):
    """A few completions: model, category, prompt, completion, why it stopped."""
    import pandas as pd

    return pd.DataFrame([{"model": c["model"], "category": c["category"], "prompt": c["prompt"],
                          "completion": c["completion"][:200], "finish": c["finish_reason"]}
                         for c in completions[:n]])


def judge_probes(cfg, out: Path, completions: list[dict], progress: bool = True) -> list[dict]:
    """The LLM judge's grade of every completion (resumes; cached replies cost nothing)."""
    from phi_lib.backends import get_backend

    tc = cfg.toxicity
    with get_backend(tc.judge, cache_dir=Path(out) / "judge_cache", run_dir=cfg.run_dir,
                     data_dir=cfg.run.data_dir) as backend:
        return judge.judge(backend, completions, tc.judge_sampling, Path(out) / "grades_judge",
                           batch_size=tc.judge.batch_size, progress=progress,
                           fmt=tc.judge_format)


def judge_table(grades: list[dict], n: int = 6):
    """A few judge replies with the grade parsed from them (or why there is none)."""
    import pandas as pd

    return pd.DataFrame([{"item": g["item"], "reply": g["reply"][:200], "grade": g["grade"],
                          "status": g["status"]} for g in grades[:n]])


def grade_book(out: Path, completions: list[dict]) -> grader.GradeBook:
    """The hand grader's state over these completions (`grades_human.jsonl`)."""
    return grader.GradeBook(Path(out) / grader.HUMAN_FILE, completions)


def probe_counts(completions: list[dict], grades: list[dict],
                 book: Optional[grader.GradeBook] = None) -> dict:
    """`{grader: {model: {category: counts}}}` for the judge and, if any, the human."""
    counts = {"judge": report.grade_counts(completions, {g["item"]: g["grade"] for g in grades})}
    if book is not None and book.n_graded:
        counts["human"] = report.grade_counts(completions, _human(book))
    return counts


def _human(book: grader.GradeBook) -> dict[str, str]:
    return {k: r["grade"] for k, r in book.grades.items()}


def agreement(book: grader.GradeBook, grades: list[dict]) -> dict:
    """Human vs judge on the items both graded (kappa, raw agreement, confusion)."""
    return report.agreement(_human(book), {g["item"]: g["grade"] for g in grades})


# ----------------------------------------------------------------------------- results
def write_results(cfg, out: Path, scores: dict, completions: list[dict], grades: list[dict],
                  book: grader.GradeBook) -> dict:
    """`results.json`: ToxiGen scores per model and group, grade counts per grader, model and
    category, human/judge agreement, and the paper's numbers beside them."""
    from phi_lib.stages import STAGES

    tc = cfg.toxicity
    judge_status: dict[str, int] = {}
    for g in grades:
        judge_status[g["status"]] = judge_status.get(g["status"], 0) + 1
    results = {
        "config_hash": STAGES["07"].config_hash(cfg),
        "models": list(tc.models),
        "toxigen": {
            "method": "Hosseini et al. 2023 safety score: Mann-Whitney U / (n_toxic n_benign) "
                      "of toxic vs benign perplexities per group (unit toxicity weights)",
            "groups": list(tc.groups or TOXIGEN_GROUPS), "per_group": tc.per_group,
            "alpha": tc.alpha,
            "scores": {m: {"mean": mean_score(s), "groups": {g: v.to_dict() for g, v in s.items()}}
                       for m, s in scores.items()}},
        "probes": {
            "n_prompts": len({c["id"] for c in completions}), "n_completions": len(completions),
            "counts": probe_counts(completions, grades, book),
            "judge": {"model": tc.judge.model, "kind": tc.judge.kind, "statuses": judge_status},
            "human": {"graded": book.n_graded, "of": len(book.items), "stale": book.stale,
                      "corrupt_lines": book.stats.n_corrupt},
            "agreement": agreement(book, grades) if book.n_graded else None,
            "paper": report.PAPER_PROBES},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(Path(out) / "results.json", results)
    return results


def write_stage_manifest(cfg, out: Path, results: dict, figures=()) -> dict:
    """The stage contract: `<model>/toxigen_mean`, `<model>/toxigen/<group>` and per grader
    `<model>/<grader>/<grade>` totals as metrics; items and parse failures as counts."""
    metrics, counts = {}, {}
    for m, s in results["toxigen"]["scores"].items():
        slug = model_slug(m)
        metrics[f"{slug}/toxigen_mean"] = s["mean"]
        metrics.update({f"{slug}/toxigen/{g}": v["score"] for g, v in s["groups"].items()})
        counts.update({f"{slug}/toxigen/{g}/n": v["n_toxic"] + v["n_benign"]
                       for g, v in s["groups"].items()})
    for who, by_model in results["probes"]["counts"].items():
        for m, cats in by_model.items():
            metrics.update({f"{model_slug(m)}/{who}/{k}": n for k, n in cats["total"].items()})
    agree = results["probes"]["agreement"]
    if agree and agree["kappa"] is not None:
        metrics["human_judge_kappa"] = agree["kappa"]
    counts.update({"probe_completions": results["probes"]["n_completions"],
                   "human_graded": results["probes"]["human"]["graded"],
                   "human_corrupt_lines": results["probes"]["human"]["corrupt_lines"]})
    counts.update({f"judge_{k}": n for k, n in results["probes"]["judge"]["statuses"].items()})
    return write_manifest(out, cfg, "07", metrics=metrics, counts=counts, figures=list(figures),
                          models=list(results["models"]))
