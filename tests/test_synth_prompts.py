"""Stage 01 prompt building and topics: deterministic per seed, data-driven, deduplicated."""
import pytest

from phi_lib.config import SamplingConfig, SynthConfig
from phi_lib.synth import build_prompt, build_prompts, load_topics, seed_taxonomy
from phi_lib.synth.topics import Topic, dedup, expand, normalize, user_topics
from synth_doubles import ScriptedBackend

pytestmark = pytest.mark.unit


def cfg(**kinds):
    return SynthConfig(kinds=kinds or {"textbook": 6, "code_textbook": 4, "code_exercises": 5})


def test_prompts_are_deterministic_per_seed_and_index():
    topics = seed_taxonomy()
    a = build_prompts(cfg(), topics, seed=7)
    b = build_prompts(cfg(), topics, seed=7)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert [s.prompt_hash for s in a] == [s.prompt_hash for s in b]
    c = build_prompts(cfg(), topics, seed=8)
    assert [s.prompt for s in a] != [s.prompt for s in c]
    # prompt i does not depend on how many prompts the run asks for (resume, bigger runs)
    big = build_prompts(cfg(textbook=20), topics, seed=7)
    assert [s.prompt for s in big[:6]] == [s.prompt for s in a[:6]]
    assert len({s.id for s in a}) == len(a)


def test_prompts_carry_their_constraints():
    topics = seed_taxonomy()
    c = cfg()
    for s in build_prompts(c, topics, seed=3):
        assert s.topic in s.prompt and s.audience in c.audiences and s.style in c.styles
        general = {t.name for t in topics if t.group == "general"}
        assert (s.topic in general) == (s.kind == "textbook")
        if s.kind == "code_exercises":
            assert s.function_name and f"`{s.function_name}`" in s.prompt
            verb, noun = s.function_name.split("_", 1)
            assert verb and noun
        else:
            assert s.function_name is None
        f = s.fields()
        assert {"topic", "audience", "style", "kind", "seed", "prompt_hash"} <= set(f)


def test_diversity_of_a_few_hundred_prompts():
    specs = build_prompts(cfg(textbook=300), seed_taxonomy(), seed=1)
    assert len({s.topic for s in specs}) > 40
    assert len({s.audience for s in specs}) == 5 and len({s.style for s in specs}) == 6
    # ~4K (topic, audience, style, template) combinations: a few repeats in 300 draws, which
    # their distinct sampling seeds still turn into distinct requests
    assert len({s.prompt for s in specs}) > 280


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="poetry"):
        build_prompt("poetry", 0, seed_taxonomy(), SynthConfig(), seed=1)


def test_user_topic_file(tmp_path):
    f = tmp_path / "topics.txt"
    f.write_text("# my topics\nbiology: cell division\nCell Division!\nrecursion\n\n")
    topics = user_topics(f)
    names = sorted({t.name for t in topics})
    assert names == ["cell division", "recursion"]  # "Cell Division!" is a duplicate
    specs = build_prompts(SynthConfig(topics=str(f), kinds={"textbook": 3, "code_exercises": 2}),
                          load_topics(SynthConfig(topics=str(f)), seed=1), seed=1)
    assert {s.topic for s in specs} <= {"cell division", "recursion"}
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_topics(SynthConfig(topics=str(tmp_path / "nope.txt")), seed=1)


def test_web_extracts_seed_textbook_prompts():
    c = SynthConfig(topics="web", web_corpus="corpora/web/c4-en", kinds={"textbook": 3})
    topics = load_topics(c, seed=5)
    specs = build_prompts(c, topics, seed=5)
    for s in specs:
        assert s.topic_origin == "web" and s.source_id and "extract from a web page" in s.prompt
    assert [s.prompt for s in specs] == [s.prompt for s in build_prompts(c, load_topics(c, seed=5), 5)]


def test_normalize_and_dedup():
    assert normalize("  2. The Water-Cycle. ") == "the water cycle"
    ts = [Topic("The water cycle", "s", "general"), Topic("- the Water cycle", "s", "general"),
          Topic("the water cycle", "s", "code")]
    assert len(dedup(ts)) == 2  # same name in another group is another topic


def test_llm_expansion_dedups_and_stops_at_target():
    # the double answers every seed with the same 3 lines, one a duplicate of a seed topic
    lines = "1. Tidal forces\n- tidal forces\nOcean currents\nthe water cycle\n"
    backend = ScriptedBackend(lambda p, s: lines)
    seeds = [Topic("the water cycle", "science", "general"), Topic("recursion", "algo", "code")]
    out = expand(seeds, backend, target=10, sampling=SamplingConfig(), seed=1)
    names = [(t.group, normalize(t.name)) for t in out]
    assert len(names) == len(set(names))
    assert ("general", "tidal forces") in names and ("code", "ocean currents") in names
    assert len(out) == 7 and backend.calls == 2  # 3 general + 4 code; round 2 adds nothing
    assert len(expand(seeds, ScriptedBackend(lambda p, s: lines), target=3,
                      sampling=SamplingConfig(), seed=1)) == 3


def test_llm_expansion_stops_on_a_failed_request():
    """A failed expansion request is not an empty answer: the run stops, naming the key."""
    backend = ScriptedBackend(lambda p, s: "Tidal forces\n", finish_reason="error")
    seeds = [Topic("the water cycle", "science", "general")]
    with pytest.raises(RuntimeError, match=r"synth\.expand_topics_to: 1 of 1 .* failed"):
        expand(seeds, backend, target=10, sampling=SamplingConfig(), seed=1)
