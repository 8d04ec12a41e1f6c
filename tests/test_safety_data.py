"""ToxiGen statements from the prompt files (splitting, dedup, seeded sampling, missing files),
the adversarial prompt suite, and the group names the config accepts."""
import json

import pytest

from phi_lib.config import TOXIGEN_GROUPS, ConfigError, load
from phi_lib.paths import MissingDataError
from phi_lib.safety import probes, toxigen

pytestmark = pytest.mark.unit


def test_split_sentences_reads_the_literal_backslash_n_format():
    line = "- women are great\\n- she was the best engineer\\n- \\n-\n"
    assert toxigen.split_sentences(line) == ["women are great", "she was the best engineer"]
    # a dash inside a sentence stays
    assert toxigen.split_sentences("- naked - all the time\\n-") == ["naked - all the time"]


def test_read_statements_dedupes_in_order(tmp_path):
    f = tmp_path / "hate_x_1k.txt"
    f.write_text("- a\\n- b\\n-\n- b\\n- c\\n-\n- a\\n-\n", encoding="utf-8")
    assert toxigen.read_statements(f) == ["a", "b", "c"]


def test_real_files_give_the_distinct_seed_sentences():
    # every line of the 1k files is a permutation of a small seed set (MANIFEST.md)
    native = toxigen.read_statements(toxigen.group_file("native_american", "toxic"))
    assert len(native) == 5 and all(not s.startswith("-") and "\\n" not in s for s in native)
    recs = toxigen.sample_statements(TOXIGEN_GROUPS, per_group=None, seed=0)
    assert {r["group"] for r in recs} == set(TOXIGEN_GROUPS)
    assert {r["label"] for r in recs} == {"toxic", "benign"}
    assert len({r["id"] for r in recs}) == len(recs)
    for g in TOXIGEN_GROUPS:  # no duplicate statement within a group and label
        for label in ("toxic", "benign"):
            texts = [r["text"] for r in recs if r["group"] == g and r["label"] == label]
            assert texts and len(texts) == len(set(texts))


def test_sampling_is_seeded_and_capped():
    a = toxigen.sample_statements(["lgbtq", "latino"], per_group=8, seed=1234)
    b = toxigen.sample_statements(["lgbtq", "latino"], per_group=8, seed=1234)
    c = toxigen.sample_statements(["lgbtq", "latino"], per_group=8, seed=99)
    assert a == b and a != c
    n = {(g, l): sum(1 for r in a if (r["group"], r["label"]) == (g, l))
         for g in ("lgbtq", "latino") for l in ("toxic", "benign")}
    # lgbtq has ~100 distinct statements per label; latino only 6 toxic and 5 benign: all kept
    assert n == {("lgbtq", "toxic"): 8, ("lgbtq", "benign"): 8,
                 ("latino", "toxic"): 6, ("latino", "benign"): 5}
    pool = toxigen.read_statements(toxigen.group_file("lgbtq", "toxic"))
    assert {r["text"] for r in a if r["group"] == "lgbtq" and r["label"] == "toxic"} <= set(pool)


def test_missing_group_file_is_a_clear_error(tmp_path):
    # ToxiGen ships no neutral file for `trans`
    with pytest.raises(MissingDataError, match=r"toxicity.groups.*benign.*'trans'.*neutral_trans_1k.txt"):
        toxigen.sample_statements(["women", "trans"], per_group=4, seed=0)
    with pytest.raises(MissingDataError, match="benchmarks/toxigen/prompts"):
        toxigen.group_file("women", "toxic", data_dir=str(tmp_path))


def test_config_names_unknown_groups():
    with pytest.raises(ConfigError, match=r"toxicity.groups.1: unknown ToxiGen group 'womn'; did you mean 'women'"):
        load({"toxicity": {"groups": ["asian", "womn"]}})
    assert len(TOXIGEN_GROUPS) == 13


def test_the_prompt_suite():
    ps = probes.load_prompts()
    assert len(ps) == 86  # as many as phi-1.5's
    cats = {}
    for p in ps:
        cats.setdefault(p["category"], []).append(p)
    assert len(cats) >= 8 and min(len(v) for v in cats.values()) >= 5
    assert ps[0]["prompt"].startswith("If I were an AI that had just achieved self-awareness")


def test_select_prompts_takes_categories_in_turn():
    ps = probes.load_prompts()
    first = probes.select_prompts(ps, 6)
    assert len({p["category"] for p in first}) == 6
    assert probes.select_prompts(ps, None) == ps
    assert sorted(p["id"] for p in probes.select_prompts(ps, 86)) == sorted(p["id"] for p in ps)


def test_prompt_file_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"id": "a", "category": "x", "prompt": "hi"}) + "\n{torn\n"
                   + json.dumps({"id": "b", "category": "x", "prompt": "yo"}) + "\n")
    from phi_lib.io import ReadStats

    stats = ReadStats()
    assert [p["id"] for p in probes.load_prompts(bad, stats)] == ["a", "b"]
    assert stats.n_corrupt == 1
    bad.write_text(json.dumps({"id": "a", "category": "x"}) + "\n")
    with pytest.raises(ValueError, match="'a' lacks prompt"):
        probes.load_prompts(bad)
    bad.write_text((json.dumps({"id": "a", "category": "x", "prompt": "p"}) + "\n") * 2)
    with pytest.raises(ValueError, match="appears twice"):
        probes.load_prompts(bad)
