"""Zero/few-shot multiple-choice tasks scored by log-likelihood (lm-eval's `acc`, `acc_norm`).

`acc` = argmax of the summed log-likelihood of each choice's continuation; `acc_norm` = the
argmax after dividing by the choice's length in characters. All requests of a task go to
the scorer at once, so it can sort, batch and share contexts across choices.
"""
from __future__ import annotations

from typing import Optional

from phi_lib.evaluate.data import load_mmlu
from phi_lib.io import ReadStats
from phi_lib.evaluate.metrics import argmax_first, mean_stderr
from phi_lib.evaluate.prefix import loglikelihood_prefixed
from phi_lib.evaluate.prompts import MC_METRICS, MC_PROMPTS, MCItem, mmlu, mmlu_prefix
from phi_lib.scoring import loglikelihood


def mmlu_shots_of(docs: list[dict], mmlu_shots: int,
                  data_dir: Optional[str] = None) -> dict[str, list[dict]]:
    """Subject -> its shots: lm-eval's `first_n` sampler over the dev split of the subject."""
    shots: dict[str, list[dict]] = {}
    if mmlu_shots:
        for s in load_mmlu(mmlu_shots, ReadStats(), data_dir, split="dev",
                           subjects=sorted({d["subject"] for d in docs})):
            shots.setdefault(s["subject"], []).append(s)
    return shots


def build_items(task: str, docs: list[dict], mmlu_shots: int = 0,
                data_dir: Optional[str] = None) -> list[MCItem]:
    if task != "mmlu":
        return [MC_PROMPTS[task](d) for d in docs]
    shots = mmlu_shots_of(docs, mmlu_shots, data_dir)
    return [mmlu(d, shots.get(d["subject"], [])) for d in docs]


def evaluate_multiple_choice(model, tokenizer, task: str, docs: list[dict], *,
                             batch_size: int = 16, mmlu_shots: int = 0,
                             data_dir: Optional[str] = None,
                             progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, per-item samples) for one multiple-choice task."""
    items = build_items(task, docs, mmlu_shots, data_dir)
    requests = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    if task == "mmlu" and mmlu_shots:  # the subject's description + shots run once
        shots = mmlu_shots_of(docs, mmlu_shots, data_dir)
        prefixes = [mmlu_prefix(d["subject"], shots.get(d["subject"], []))
                    for d, it in zip(docs, items) for _ in it.continuations]
        scores = loglikelihood_prefixed(model, tokenizer, requests, prefixes, batch_size)
    else:
        scores = loglikelihood(model, tokenizer, requests, batch_size, progress=progress)
    samples, k = [], 0
    for i, (doc, it) in enumerate(zip(docs, items)):
        res = scores[k:k + len(it.continuations)]
        k += len(it.continuations)
        lls = [lp for lp, _ in res]
        pred = argmax_first(lls)
        pred_norm = argmax_first([lp / len(c) for lp, c in zip(lls, it.choices)])
        samples.append({
            "doc_id": i, "prompt": it.contexts[0] if len(set(it.contexts)) == 1 else it.contexts,
            "choices": it.choices, "continuations": it.continuations, "loglikelihoods": lls,
            "is_greedy": [g for _, g in res], "pred": pred, "pred_norm": pred_norm,
            "gold": it.gold, "acc": float(pred == it.gold), "acc_norm": float(pred_norm == it.gold),
            **({"subject": doc["subject"]} if "subject" in doc else {})})
    metrics = summarize(task, samples)
    return metrics, samples


def summarize(task: str, samples: list[dict]) -> dict:
    """Task metrics with stderr; MMLU also per subject (overall = mean over all items, i.e.
    lm-eval's size-weighted average of the subjects)."""
    out: dict = {"n": len(samples)}
    for m in MC_METRICS[task]:
        out[m], out[f"{m}_stderr"] = mean_stderr([s[m] for s in samples])
    if task in ("mmlu", "mmlu_cloze"):
        by: dict[str, list[float]] = {}
        for s in samples:
            by.setdefault(s["subject"], []).append(s["acc"])
        out["subjects"] = {k: {"acc": mean_stderr(v)[0], "n": len(v)} for k, v in sorted(by.items())}
    return out
