"""Stage 01 quality filters on constructed cases, through the real stage steps:
near-duplicates (MinHash), 13-gram decontamination against the benchmark files, exercises
run against their asserts in the sandbox, repetition, length, truncation."""
import json
import math
import re

import pytest

from phi_lib.config import load
from phi_lib.paths import data_path
from phi_lib.synth import build_prompts, read_samples, seed_taxonomy
from phi_lib.synth.quality import extract_code, repeated_ngram_fraction
from synth_doubles import ScriptedBackend, run_steps

pytestmark = pytest.mark.unit

ESSAY = ("Plants turn light into chemical energy. In the leaves, chlorophyll absorbs sunlight "
         "and the plant combines carbon dioxide from the air with water from the soil to make "
         "glucose, releasing oxygen as a by-product. This process, photosynthesis, feeds "
         "almost every food chain on Earth, because animals eat plants or eat animals that do.")
OTHER = ("A budget is a plan for money. Write down what comes in each month, then list fixed "
         "costs such as rent and variable ones such as food. Saving a small share first, "
         "before spending, builds a cushion for surprises and makes large purchases possible "
         "without debt. Review the plan monthly and adjust it when your life changes.")


def make(tmp_path, answers: dict, kinds: dict, **synth):
    """Run the stage with a backend that answers prompt i of a kind with answers[kind][i]."""
    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path)})
    cfg.synth.kinds = kinds
    cfg.synth.decontaminate_against = ["gsm8k"]
    for k, v in synth.items():
        setattr(cfg.synth, k, v)
    specs = build_prompts(cfg.synth, seed_taxonomy(), cfg.run.seed)
    script = {s.prompt: answers[s.kind][s.index] for s in specs}
    out = tmp_path / "01_synthesize"
    backend = ScriptedBackend(lambda p, seed: script[p])
    stage = run_steps(cfg, backend, out)
    return stage.step_stats("filter"), out, specs


def reasons(out, kind):
    return {r["index"]: r["drop_reason"] for r in read_samples(out, kind, dropped=True)}


def test_near_duplicates_dropped_first_copy_kept(tmp_path):
    edited = ESSAY.replace("by-product", "byproduct")  # one word differs
    summary, out, _ = make(tmp_path, {"textbook": [ESSAY, OTHER, edited, ESSAY]}, {"textbook": 4})
    kept = read_samples(out, "textbook")
    assert [r["index"] for r in kept] == [0, 1]
    assert reasons(out, "textbook") == {2: "near_duplicate", 3: "near_duplicate"}
    drop = read_samples(out, "textbook", dropped=True)[0]
    assert drop["drop_detail"] == "textbook-0000000"
    assert summary["drops"] == {"textbook/near_duplicate": 2}


def test_decontamination_against_benchmark_13grams(tmp_path):
    item = json.loads(data_path("benchmarks/gsm8k/test.jsonl").read_text().splitlines()[0])
    words = re.findall(r"\w+", item["question"])  # the words decontamination compares
    leak = OTHER + " " + " ".join(words[:13])  # 13 consecutive benchmark words
    near = ESSAY + " " + " ".join(words[:12])  # 12 words: not a 13-gram match
    summary, out, _ = make(tmp_path, {"textbook": [leak, near]}, {"textbook": 2})
    assert reasons(out, "textbook") == {0: "contaminated"}
    assert read_samples(out, "textbook", dropped=True)[0]["drop_detail"] == "gsm8k"
    assert [r["index"] for r in read_samples(out, "textbook")] == [1]


GOOD = '''```python
def {name}(xs: list[int]) -> int:
    """Return the sum of the even numbers in xs."""
    return sum(x for x in xs if x % 2 == 0)

assert {name}([1, 2, 3, 4]) == 6
assert {name}([]) == 0
assert {name}([7]) == 0
```'''


def test_exercise_checker_drops_wrong_solutions(tmp_path):
    cfg_specs = build_prompts(load("params/smoke.yaml").synth.__class__(
        kinds={"code_exercises": 5}), seed_taxonomy(), 1234)
    names = [s.function_name for s in cfg_specs]
    wrong = GOOD.replace("x % 2 == 0", "x % 2 == 1")
    answers = [GOOD.format(name=names[0]),
               wrong.format(name=names[1]),                               # asserts fail
               GOOD.format(name=names[2]).replace("assert", "# check"),  # no asserts
               GOOD.format(name="some_other_name"),                       # ignores the constraint
               GOOD.format(name=names[4]).replace("return sum", "while True: pass\n    return sum")]
    summary, out, specs = make(tmp_path, {"code_exercises": answers}, {"code_exercises": 5},
                               exercise_timeout_s=3)
    assert [s.function_name for s in specs] == names
    assert reasons(out, "code_exercises") == {
        1: "exercise_failed", 2: "exercise_no_asserts", 3: "exercise_missing_function",
        4: "exercise_timeout"}
    ran = {r["index"]: r.get("sandbox_status") for r in read_samples(out, "code_exercises")
           + read_samples(out, "code_exercises", dropped=True)}
    assert ran == {0: "passed", 1: "failed", 2: None, 3: None, 4: "timeout"}  # 2, 3 never ran
    assert {k: v for k, v in summary["counts"].items() if "/sandbox_" in k} == {
        "code_exercises/sandbox_run": 3, "code_exercises/sandbox_passed": 1,
        "code_exercises/sandbox_failed": 1, "code_exercises/sandbox_timeout": 1,
        "code_exercises/sandbox_error": 0}
    failed = read_samples(out, "code_exercises", dropped=True)[0]
    assert failed["index"] == 1 and failed["drop_detail"].startswith("AssertionError")
    [kept] = read_samples(out, "code_exercises")
    assert kept["index"] == 0 and kept["text"].startswith(f"def {names[0]}(")
    assert "```" not in kept["text"] and kept["completion"] == answers[0]


def test_sandbox_unavailable_stops_before_generating(tmp_path, monkeypatch):
    """Fail closed: where the sandbox cannot build `synth.sandbox_isolation`'s walls, the
    stage stops before asking the backend for anything; a weaker level named runs."""
    from phi_lib import sandbox

    monkeypatch.setattr(sandbox, "_probe", lambda backend, bwrap: (("limits", "audit"), ("simulated",)))
    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path)})
    cfg.synth.kinds, cfg.synth.decontaminate_against = {"code_exercises": 1}, []
    specs = build_prompts(cfg.synth, seed_taxonomy(), cfg.run.seed)
    backend = ScriptedBackend(lambda p, seed: GOOD.format(name=specs[0].function_name))
    with pytest.raises(sandbox.SandboxUnavailable, match="^synth.sandbox_isolation: .*'strict'"):
        run_steps(cfg, backend, tmp_path)
    assert backend.calls == 0
    cfg.synth.sandbox_isolation = "weak"
    run_steps(cfg, backend, tmp_path)
    assert backend.calls == 1 and [r["index"] for r in read_samples(tmp_path, "code_exercises")] == [0]


def test_exercise_cut_by_max_new_tokens_is_named_truncated(tmp_path):
    """A budget too small for the asserts: `exercise_truncated`, with the check that failed;
    a complete exercise that still ran into the budget (no closing fence) is run as usual."""
    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path)})
    cfg.synth.kinds, cfg.synth.decontaminate_against = {"code_exercises": 2}, []
    specs = build_prompts(cfg.synth, seed_taxonomy(), cfg.run.seed)
    names = [s.function_name for s in specs]
    answers = {specs[0].prompt: GOOD.format(name=names[0]).split("assert")[0],
               specs[1].prompt: GOOD.format(name=names[1]).rstrip("`\n")}
    run_steps(cfg, ScriptedBackend(lambda p, s: answers[p], finish_reason="length"), tmp_path)
    [drop] = read_samples(tmp_path, "code_exercises", dropped=True)
    assert drop["index"] == 0 and drop["drop_reason"] == "exercise_truncated"
    budget = cfg.synth.sampling.max_new_tokens
    assert drop["drop_detail"].startswith(
        f"exercise_no_asserts: the completion hit max_new_tokens ({budget})")
    assert [r["index"] for r in read_samples(tmp_path, "code_exercises")] == [1]


def test_length_truncation_repetition_and_record_fields(tmp_path):
    loop = "the cat sat on the mat. " * 30
    summary, out, specs = make(tmp_path, {"textbook": [ESSAY, "Too short.", loop]},
                               {"textbook": 3}, min_chars=100)
    assert reasons(out, "textbook") == {1: "too_short", 2: "repetition"}
    [rec] = read_samples(out, "textbook")
    for key in ("topic", "subject", "audience", "style", "kind", "backend", "model", "sampling",
                "seed", "sample_seed", "prompt_hash", "prompt", "text", "completion_tokens",
                "fingerprint", "filter_fingerprint", "completion_hash"):
        assert key in rec, key
    budget = load("params/smoke.yaml").synth.sampling.max_new_tokens
    assert rec["backend"] == "scripted" and rec["sampling"]["max_new_tokens"] == budget
    assert rec["prompt_hash"] == specs[0].prompt_hash
    assert repeated_ngram_fraction(loop) > 0.8 and repeated_ngram_fraction(ESSAY) == 0.0
    # a completion that hit max_new_tokens is dropped when drop_truncated is on
    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path / "t")})
    cfg.synth.kinds, cfg.synth.drop_truncated, cfg.synth.decontaminate_against = \
        {"textbook": 1}, True, []
    run_steps(cfg, ScriptedBackend(lambda p, s: ESSAY, finish_reason="length"), tmp_path / "t")
    assert reasons(tmp_path / "t", "textbook") == {0: "truncated"}


def test_extract_code_joins_fenced_blocks():
    text = "Here:\n```python\nx = 1\n```\ntext\n```\ny = 2\n```"
    assert extract_code(text) == "x = 1\n\ny = 2"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_missing_benchmark_names_the_synth_key(tmp_path):
    from phi_lib.paths import MissingDataError

    with pytest.raises(MissingDataError, match=r"synth\.decontaminate_against: benchmark 'nope'"):
        make(tmp_path, {"textbook": [ESSAY]}, {"textbook": 1}, decontaminate_against=["nope"])


def test_distinct_n_of_the_diversity_report():
    from phi_lib.synth.report import distinct_n

    assert distinct_n(["a b a b"], 1) == 0.5  # 2 unique words of 4
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b c", "a b c"], 3) == 0.5  # a copy adds n-grams, not unique ones
    assert math.isnan(distinct_n([], 2)) and math.isnan(distinct_n(["one"], 2))  # undefined
