"""Our harness gives lm-evaluation-harness's numbers: same prompts, same per-item
log-likelihoods (to float tolerance) and the same predictions, on the first items of several
tasks with a real pretrained model (SmolLM2-135M-Instruct, offline).

lm-eval runs its own shipped task YAMLs (included by path, or their templates copied from
its files) over the very documents our loaders produce (`write_lm_eval_tasks`).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval")
LIMIT = 3
TASKS = ["arc_easy", "piqa", "boolq", "hellaswag", "winogrande", "mmlu", "mmlu_cloze",
         "commonsense_qa"]
SUBJECT = "high_school_geography"


@pytest.fixture(scope="module")
def smollm2():
    from phi_lib.hf_models import load_causal_lm

    try:
        return load_causal_lm("smollm2", device="cpu", dtype="float32")
    except FileNotFoundError as e:
        pytest.skip(f"smollm2 not available: {e}")


def test_same_predictions_as_lm_eval(smollm2, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from phi_lib.config import EvaluateConfig
    from phi_lib.evaluate import run_task
    from phi_lib.evaluate.data import load_task

    from phi_lib.evaluate.lm_eval_tasks import write_lm_eval_tasks

    model, tok = smollm2
    names = write_lm_eval_tasks(tmp_path, TASKS, LIMIT, mmlu_subjects=[SUBJECT], prefix="parity_")
    t0 = time.perf_counter()
    theirs = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
                             tasks=list(names), task_manager=TaskManager(include_path=str(tmp_path)),
                             log_samples=True, bootstrap_iters=0)
    t_ref = time.perf_counter() - t0
    cfg = EvaluateConfig(batch_size=8, mmlu_shots=2)
    for name, task in names.items():
        docs = load_task(task, LIMIT)
        if task in ("mmlu", "mmlu_cloze"):
            docs = [d for d in docs if d["subject"] == SUBJECT]
        metrics, ours = run_task(model, tok, task, docs, cfg, progress=False)
        ref = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
        assert len(ref) == len(ours) == LIMIT, name
        for o, r in zip(ours, ref):
            # same prompt, same continuations
            prompts = [a.args[0] if hasattr(a, "args") else a[0] for a in r["arguments"]] \
                if not isinstance(r["arguments"], dict) else \
                [v["arg_0"] for v in r["arguments"].values()]
            ctx = o["prompt"] if isinstance(o["prompt"], list) else [o["prompt"]] * len(prompts)
            assert prompts == ctx, (name, o["doc_id"])
            lls = [float(x[0]) for x in r["filtered_resps"]]
            np.testing.assert_allclose(o["loglikelihoods"], lls, atol=2e-3, rtol=1e-4,
                                       err_msg=f"{name} item {o['doc_id']}")
            assert o["pred"] == int(np.argmax(lls)), (name, o["doc_id"])
            assert o["acc"] == r["acc"], (name, o["doc_id"])
            if "acc_norm" in r:
                assert o["acc_norm"] == r["acc_norm"], (name, o["doc_id"])
        assert metrics["acc"] == pytest.approx(theirs["results"][name]["acc,none"]), name
    print(f"lm-eval {t_ref:.1f}s")


def test_harness_is_above_chance_on_real_model(smollm2, tmp_path):
    """A real pretrained model gives real numbers: SmolLM2 beats chance on PIQA's first 30."""
    from phi_lib.evaluate import evaluate_model

    res = evaluate_model("smollm2", ["piqa"], tmp_path, limit=30, loaded=smollm2,
                         progress=False)
    assert res["results"]["piqa"]["acc_norm"] > 0.55
    lines = (tmp_path / "samples" / "piqa.jsonl").read_text().splitlines()
    assert len(lines) == 30 and {"prompt", "choices", "loglikelihoods", "pred", "gold"} <= set(
        json.loads(lines[0]))
