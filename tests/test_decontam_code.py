"""phi-1's code decontamination (sec. 5.2) on constructed cases: a HumanEval solution with
renamed variables and changed literals, one with reordered statements, and unrelated
functions; the edit distance against a plain dynamic-programming reference."""
import random

import pytest

from phi_lib.synth.code_decontam import (CodeBenchmarks, ast_tokens, levenshtein, match_rate,
                                         normalize, prune_table)

pytestmark = pytest.mark.unit


def reference_levenshtein(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_levenshtein_matches_the_textbook_dp():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        assert levenshtein(a, b) == reference_levenshtein(a, b), (a, b)


@pytest.fixture(scope="module")
def humaneval():
    return CodeBenchmarks.build(["humaneval"])


def problem(bench, tid):
    return bench.codes[bench.ids.index(tid)]


def test_renamed_variables_and_literals_are_the_same_tree(humaneval):
    src = problem(humaneval, "humaneval/HumanEval/0")  # has_close_elements
    renamed = (src.replace("numbers", "xs").replace("threshold", "eps").replace("idx2", "j")
               .replace("idx", "i").replace("elem2", "b").replace("elem", "a")
               .replace("distance", "gap"))
    assert renamed != src and normalize(renamed) == normalize(src)
    m = humaneval.nearest(renamed)
    assert m.benchmark == "humaneval/HumanEval/0" and m.rate == 1.0


def test_reordered_statements_still_match_above_the_papers_thresholds():
    a = """def stats(xs):
    total = sum(xs)
    count = len(xs)
    biggest = max(xs)
    smallest = min(xs)
    return total / count, biggest - smallest
"""
    b = """def summary(values):
    smallest = min(values)
    biggest = max(values)
    count = len(values)
    total = sum(values)
    return total / count, biggest - smallest
"""
    rate = match_rate(ast_tokens(a), ast_tokens(b))
    assert 0.8 <= rate < 1.0  # caught at tau = 0.8, not an exact copy
    bench = CodeBenchmarks(["bench/stats"], [a])
    assert bench.nearest(b).benchmark == "bench/stats"


def test_unrelated_functions_do_not_match(humaneval):
    unrelated = '''def parse_header(line):
    """Split an HTTP header line."""
    key, _, value = line.partition(":")
    if not key:
        raise ValueError("empty header")
    return {key.strip().lower(): value.strip()}
'''
    m = humaneval.nearest(unrelated, floor=0.0)
    assert m.rate < 0.8, m
    assert humaneval.nearest("this is not python (").benchmark is None


def test_prune_table_counts_each_threshold():
    assert prune_table([1.0, 0.93, 0.86, 0.5]) == {"0.95": 1, "0.9": 2, "0.85": 3, "0.8": 3}


def test_embedding_distance_finds_the_near_copy(humaneval):
    from test_filter_provenance import WordHashEmbedder

    src = problem(humaneval, "humaneval/HumanEval/2")
    copy = src.replace("number", "value")
    unrelated = "def f(path):\n    with open(path) as fh:\n        return [l.split(',') for l in fh]\n"
    near, far = humaneval.embedding_nearest([copy, unrelated], WordHashEmbedder())
    assert near.benchmark == "humaneval/HumanEval/2" and near.rate > 0.99
    assert far.rate < near.rate


def test_stage_01_drops_an_exercise_that_copies_a_benchmark_and_records_the_rate(humaneval):
    from phi_lib.config import load
    from phi_lib.synth.quality import check_alone

    cfg = load("params/smoke.yaml", {"synth.decontaminate_against": [], "synth.check_exercises": False,
                                     "synth.drop_truncated": True}).synth
    src = problem(humaneval, "humaneval/HumanEval/0").replace("numbers", "values")
    copy = f"```python\n{src}\nassert has_close_elements([1.0, 2.0], 0.5) is False\n```"
    own = ("```python\ndef count_vowels(word):\n    n = 0\n    for ch in word.lower():\n"
           "        if ch in 'aeiou':\n            n += 1\n    return n\n\n"
           "assert count_vowels('Banana') == 3\n```")
    recs = [{"kind": "code_exercises", "text": t, "function_name": f, "finish_reason": "stop",
             "sampling": {"max_new_tokens": 512}}
            for t, f in ((copy, "has_close_elements"), (own, "count_vowels"))]
    from test_filter_provenance import WordHashEmbedder

    check_alone(recs, cfg, benchmarks=None, code_benchmarks=lambda: humaneval,
                code_embedder=WordHashEmbedder)
    assert recs[0]["drop_reason"] == "contaminated_ast" and recs[0]["ast_match"]["rate"] == 1.0
    assert "humaneval/HumanEval/0" in recs[0]["drop_detail"]
    assert "drop_reason" not in recs[1] and recs[1]["ast_match"]["rate"] < 0.8
    assert "embedding_match" not in recs[0]  # dropped before: the embedding is not asked
    assert recs[1]["embedding_match"]["similarity"] < 0.99
    # an embedding threshold drops what the AST check let through
    recs[1].pop("embedding_match")
    cfg.decontaminate_ast_threshold, cfg.decontaminate_embedding_threshold = None, 0.0
    check_alone(recs[1:], cfg, benchmarks=None, code_benchmarks=lambda: humaneval,
                code_embedder=WordHashEmbedder)
    assert recs[1]["drop_reason"] == "contaminated_embedding"
    assert recs[1]["drop_detail"].startswith(recs[1]["embedding_match"]["benchmark"])


def test_stage_01_manifest_counts_what_each_threshold_would_prune():
    from phi_lib.synth.stage import kind_stats

    samples = [{"text": "x", "ast_match": {"benchmark": "b", "rate": r}} for r in (1.0, 0.91, 0.82)]
    samples.append({"text": "y", "drop_reason": "exercise_truncated"})  # never reached the check
    counts: dict = {}
    kind_stats("code_exercises", samples, counts, {}, {})
    assert counts["code_exercises/ast_checked"] == 3
    assert [counts[f"code_exercises/ast_prune_at_{t}"] for t in ("0.95", "0.9", "0.85", "0.8")] == [1, 2, 2, 3]
