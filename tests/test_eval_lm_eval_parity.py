"""Our harness gives lm-evaluation-harness's numbers: same prompts, same per-item
log-likelihoods (to float tolerance) and the same predictions, on the first items of several
tasks with a real pretrained model (SmolLM2-135M-Instruct, offline).

lm-eval runs its own shipped task YAMLs (included by path, or their templates copied from
its files) over the very documents our loaders produce, written to a temp dir as JSONL.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval")
TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
LIMIT = 3


@pytest.fixture(scope="module")
def smollm2():
    from phi_lib.hf_models import load_causal_lm

    try:
        return load_causal_lm("smollm2", device="cpu", dtype="float32")
    except FileNotFoundError as e:
        pytest.skip(f"smollm2 not available: {e}")


def _write(path: Path, docs: list[dict]) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def _task_yamls(tmp: Path) -> dict[str, dict]:
    """lm-eval task configs over our loaders' documents; name -> (our task, yaml dict)."""
    from phi_lib.evaluate.data import load_mmlu, load_task
    from phi_lib.io import ReadStats

    local = lambda f: {"dataset_path": "json", "dataset_name": None,  # noqa: E731
                       "dataset_kwargs": {"data_files": {"test": f}},
                       "test_split": "test", "training_split": None, "validation_split": None}
    cfgs = {}
    for ours, shipped in (("arc_easy", "arc/arc_easy.yaml"), ("piqa", "piqa/piqa.yaml"),
                          ("boolq", "super_glue/boolq/default.yaml")):
        f = _write(tmp / f"{ours}.jsonl", load_task(ours, LIMIT))
        cfgs[f"parity_{ours}"] = (ours, {"include": str(TASKS_DIR / shipped),
                                         "task": f"parity_{ours}", "tag": [], **local(f)})
    f = _write(tmp / "hellaswag.jsonl", load_task("hellaswag", LIMIT))
    cfgs["parity_hellaswag"] = ("hellaswag", {
        "include": str(TASKS_DIR / "hellaswag/hellaswag.yaml"), "task": "parity_hellaswag",
        "tag": [], "process_docs": None, "doc_to_target": "{{gold}}", **local(f)})
    # WinoGrande partial scoring: lm-eval's doc_to_text/choice/target values, precomputed
    f = _write(tmp / "winogrande.jsonl", load_task("winogrande", LIMIT))
    cfgs["parity_winogrande"] = ("winogrande", {
        "task": "parity_winogrande", "output_type": "multiple_choice", "doc_to_text": "gold",
        "doc_to_choice": "contexts", "doc_to_target": "continuation",
        "metric_list": [{"metric": "acc"}], **local(f)})
    # MMLU 2-shot: lm-eval's template file, first_n dev shots of the subject
    template = yaml.safe_load((TASKS_DIR / "mmlu/default/_default_template_yaml").read_text())
    subject = "high_school_geography"
    test = _write(tmp / "mmlu_test.jsonl", load_mmlu(LIMIT, ReadStats(), subjects=(subject,)))
    dev = _write(tmp / "mmlu_dev.jsonl", load_mmlu(5, ReadStats(), split="dev", subjects=(subject,)))
    cfgs["parity_mmlu"] = ("mmlu", {
        **template, "task": "parity_mmlu", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": test, "dev": dev}}, "num_fewshot": 2,
        "description": f"The following are multiple choice questions (with answers) about "
                       f"{subject.replace('_', ' ')}.\n\n"})
    for name, (_, cfg) in cfgs.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return cfgs


def test_same_predictions_as_lm_eval(smollm2, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from phi_lib.config import EvaluateConfig
    from phi_lib.evaluate import run_task
    from phi_lib.evaluate.data import load_task

    model, tok = smollm2
    cfgs = _task_yamls(tmp_path)
    t0 = time.perf_counter()
    theirs = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
                             tasks=list(cfgs), task_manager=TaskManager(include_path=str(tmp_path)),
                             log_samples=True, bootstrap_iters=0)
    t_ref = time.perf_counter() - t0
    cfg = EvaluateConfig(batch_size=8, mmlu_shots=2)
    for name, (task, _) in cfgs.items():
        docs = load_task(task, LIMIT)
        if task == "mmlu":
            docs = [d for d in load_task("mmlu", LIMIT) if d["subject"] == "high_school_geography"]
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
