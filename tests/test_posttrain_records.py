"""Stage 08 data: the formats become conversations and pairs; malformed records are counted
with a reason and where they were; a source with nothing usable stops the stage, naming it."""
import gzip
import json

import pytest

from phi_lib.config import load
from phi_lib.paths import data_path
from phi_lib.posttrain import records
from tests.posttrain_fixtures import tiny_model_dir, write_jsonl

pytestmark = pytest.mark.unit

HH = ("\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt.\n\n"
      "Human: How long?\n\nAssistant: ")


def test_hh_rlhf_pairs_split_after_the_shared_turns():
    p = records.pair({"chosen": HH + "About 40 minutes at 220C.", "rejected": HH + "No idea."}, "auto")
    assert p.reason is None
    assert [m["role"] for m in p.value["prompt"]] == ["user", "assistant", "user"]
    assert p.value["prompt"][2]["content"] == "How long?"
    assert p.value["chosen"] == [{"role": "assistant", "content": "About 40 minutes at 220C."}]
    assert p.value["rejected"] == [{"role": "assistant", "content": "No idea."}]


def test_real_hh_rlhf_records_parse_into_turns():
    path = data_path("posttrain/hh-rlhf/harmless-base/test.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        recs = [json.loads(next(f)) for _ in range(50)]
    parsed = [records.pair(r, "hh_rlhf") for r in recs]
    ok = [p for p in parsed if p.reason is None]
    assert len(ok) >= 45  # the manifest: nearly all pairs share the prefix
    for r, p in zip(recs, parsed):
        if p.reason is None:  # the pair is the original dialogue, re-joined
            turns = p.value["prompt"] + p.value["chosen"]
            assert [m["content"] for m in turns] == [
                t.strip() for t in records._HH_TURN.split(r["chosen"])[2::2]]


@pytest.mark.parametrize("rec, fmt, reason", [
    ({"rejected": HH + "x"}, "hh_rlhf", "missing_chosen"),
    ({"prompt": "q", "chosen": "a"}, "pairs", "missing_rejected"),
    ({"chosen": HH + "", "rejected": HH + "no"}, "hh_rlhf", "empty_assistant_turn"),
    ({"chosen": "\n\nBot: hi\n\nAssistant: yo", "rejected": HH + "no"}, "hh_rlhf", "unknown_role"),
    ({"chosen": HH + "same", "rejected": HH + "same"}, "hh_rlhf", "identical_answers"),
    ({"chosen": HH + "a", "rejected": "\n\nHuman: Other?\n\nAssistant: b"}, "hh_rlhf", "prompt_mismatch"),
    ({"prompt": [{"role": "wizard", "content": "q"}], "chosen": "a", "rejected": "b"}, "pairs", "unknown_role"),
])
def test_malformed_pairs_get_a_reason(rec, fmt, reason):
    p = records.pair(rec, fmt)
    assert p.value is None and p.reason == reason, p


@pytest.mark.parametrize("rec, reason", [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "empty_assistant_turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "more?"}]}, "ends_without_answer"),
    ({"messages": "hello"}, "no_messages"),
    ({"title": "no known keys"}, "unknown_format"),
])
def test_malformed_conversations_get_a_reason(rec, reason):
    (p,) = records.conversations(rec, "auto")
    assert p.value is None and p.reason == reason, p


def test_formats_become_conversations():
    (g,) = records.conversations({"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}, "gsm8k")
    assert g.value[1]["content"] == "2+2=4\n#### 4"  # calculator annotation removed
    seed = {"instruction": "Translate.", "instances": [{"input": "Hallo", "output": "Hello"},
                                                       {"input": "", "output": "Nothing"}]}
    a, b = records.conversations(seed, "auto")
    assert a.value[0]["content"] == "Translate.\n\nHallo" and b.value[0]["content"] == "Translate."
    (h,) = records.conversations({"chosen": HH + "40 minutes.", "rejected": HH + "no"}, "auto")
    assert h.value[-1] == {"role": "assistant", "content": "40 minutes."}


def _stage(tmp_path, sources):
    from phi_lib.posttrain.stage import PosttrainStage

    cfg = load({"posttrain": {"base_model": str(tiny_model_dir(tmp_path / "tiny")),
                              "sft_sources": sources, "sft_examples": 4}},
               {"run.output_root": str(tmp_path / "out")})
    stage = PosttrainStage(cfg, log=lambda s: None)
    stage.prepare_base()
    return stage


def test_sft_data_counts_drops_by_reason_and_where(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    f = write_jsonl(tmp_path / "chats.jsonl", [
        good, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "narrator", "content": "x"}]}, {"unrelated": 1}, good])
    with open(f, "a") as fh:
        fh.write("{not json\n")
    stage = _stage(tmp_path, {"chats": {"path": str(f), "format": "auto", "weight": 1.0}})
    stats = stage.sft_data()
    assert stats["drops"] == {"sft/chats/empty_assistant_turn": 1, "sft/chats/unknown_role": 1,
                              "sft/chats/unknown_format": 1, "sft/chats/corrupt_line": 1}
    assert stats["counts"]["sft/chats/available"] == 2 and stats["counts"]["sft_conversations"] == 4
    logged = [json.loads(x) for x in (stage.data / "sft_drops.jsonl").read_text().splitlines()]
    assert {d["where"] for d in logged} >= {f"{f}:2", f"{f}:3", f"{f}:4", f"{f}:6"}
    assert f"sft/chats/{f.name}" in stage.inputs  # the runner re-checks the file's digest


def test_nothing_usable_stops_before_training_naming_the_file(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "only a question"}]}])
    stage = _stage(tmp_path, {"bad": {"path": str(f), "weight": 1.0}})
    with pytest.raises(ValueError, match=rf"posttrain\.sft_sources\.bad: nothing usable in {f} "
                                         r"\(no_assistant_turn 1\)"):
        stage.sft_data()
    assert not (stage.data / "sft.jsonl").exists()


def test_a_datasets_dataset_is_a_source(tmp_path):
    from phi_lib.config import ChatSourceConfig
    from phi_lib.io import ReadStats
    from phi_lib.posttrain import sources

    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)])
    src = ChatSourceConfig(kind="hf", hf_dataset=f"{tmp_path / 'ds'}::train", limit=2)
    got = list(sources.read(src, ReadStats()))
    assert [w for _, w in got] == [f"{tmp_path / 'ds'}::train:0", f"{tmp_path / 'ds'}::train:1"]
    (conv,) = records.conversations(got[1][0], "auto")
    assert conv.value == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]


def test_mix_takes_each_share_and_repeats_a_small_pool():
    from phi_lib.posttrain.sources import mix

    items, stats = mix({"a": list(range(3)), "b": list(range(100, 110))}, {"a": 0.5, "b": 0.5}, 10, seed=1)
    assert len(items) == 10 and sum(i < 100 for i in items) == 5
    assert stats["a"] == {"available": 3, "taken": 5, "epochs": 1.667}
    assert set(i for i in items if i < 100) == {0, 1, 2}  # every item before any repeats
    assert mix({"a": [1, 2]}, {"a": 1.0}, 2, seed=1) == mix({"a": [1, 2]}, {"a": 1.0}, 2, seed=1)
