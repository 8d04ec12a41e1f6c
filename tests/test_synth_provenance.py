"""Stage 01 provenance (issue 12) on the stage's steps with a scripted backend: a changed
result-affecting knob recomputes what it changes (and no stale record remains), an
operational one recomputes nothing, and a failed request is no result but is asked again.
The runner-level versions (papermill, kill -9) are in tests/test_synth_runner.py."""
import dataclasses
import json

import pytest

from phi_lib.backends.base import Completion
from phi_lib.config import SynthConfig, load
from phi_lib.io import ShardedJsonlWriter, iter_jsonl_files, read_json, read_jsonl
from phi_lib.provenance import is_operational
from phi_lib.stage_base import StageIncomplete
from phi_lib.synth import fingerprints as fps
from phi_lib.synth import filter_fingerprint, generation_fingerprint
from synth_doubles import ScriptedBackend, run_steps

pytestmark = pytest.mark.unit

KINDS = {"textbook": 4, "code_textbook": 2}


def answer(prompt, seed):
    """Distinct, long enough, non-repetitive text; its length varies with the seed."""
    return f"Sample {seed}. " + " ".join(f"w{seed % 997}x{i}" for i in range(20 + seed % 40))


def config(root, **over):
    cfg = load("params/smoke.yaml", {"run.output_root": str(root), **over})
    cfg.synth.kinds = dict(KINDS)
    cfg.synth.decontaminate_against = cfg.synth.decontaminate_code_against = []
    return cfg


def records(out, folder):
    return [r for f in iter_jsonl_files(out / folder) for r in read_jsonl(f)]


def samples(out):
    return [r for f in ("textbook", "code_textbook", ".dropped") for r in records(out, f)]


def finished(tmp_path, **over):
    cfg = config(tmp_path, **over)
    stage = run_steps(cfg, ScriptedBackend(answer))
    return cfg, stage.out


@pytest.mark.parametrize("knob,value", [("synth.sampling.temperature", 0.9), ("run.seed", 7),
                                        ("synth.backend.dtype", "float32")])
def test_result_knob_regenerates_every_record(tmp_path, knob, value):
    """(issue 12: stage 01 skipped every id already kept or dropped, whatever the config.)"""
    cfg, out = finished(tmp_path)
    old = generation_fingerprint(cfg).key
    cfg2 = config(tmp_path, **{knob: value})
    new = generation_fingerprint(cfg2).key
    assert new != old and f"{knob}" in generation_fingerprint(cfg2).changes(
        generation_fingerprint(cfg))
    backend = ScriptedBackend(answer)
    run_steps(cfg2, backend)
    assert len(backend.prompts) == sum(KINDS.values())  # every sample asked again
    for folder in (".generated", "textbook", "code_textbook", ".dropped"):
        assert all(r["fingerprint"] == new for r in records(out, folder)), folder
    ids = [r["id"] for r in samples(out)]
    assert len(ids) == len(set(ids)) == sum(KINDS.values())
    if knob == "synth.sampling.temperature":
        assert all(r["sampling"]["temperature"] == 0.9 for r in samples(out))


def test_changed_prompt_regenerates_that_record_only(tmp_path, monkeypatch):
    """A prompt that changed (a template, a topic) makes its record stale, and only it."""
    import phi_lib.synth.stage as stage_mod

    cfg, out = finished(tmp_path)
    real = stage_mod.build_prompts

    def edited(*a, **kw):
        specs = real(*a, **kw)
        specs[1] = dataclasses.replace(specs[1], prompt=specs[1].prompt + " Use short sentences.")
        return specs

    monkeypatch.setattr(stage_mod, "build_prompts", edited)
    monkeypatch.setattr(fps, "package_file_digest", lambda name: f"edited {name}")  # a new template file
    backend = ScriptedBackend(answer)
    run_steps(cfg, backend)
    assert len(backend.prompts) == 1 and backend.prompts[0].endswith("Use short sentences.")
    [rec] = [r for r in records(out, ".generated") if r["id"] == "textbook-0000001"]
    assert rec["prompt"].endswith("Use short sentences.")
    assert sum(r["prompt"].endswith("sentences.") for r in samples(out)) == 1


def test_a_changed_model_file_is_another_generator(tmp_path):
    """Same `synth.backend.model` name, other bytes in the model folder: stale."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"n_layer": 2}')
    (model / "model.safetensors").write_bytes(b"weights-1")
    (model / "optimizer.pt.tmp").write_bytes(b"not part of the model")
    cfg, out = finished(tmp_path, **{"synth.backend.model": str(model)})
    fp = generation_fingerprint(cfg)
    (model / "optimizer.pt.tmp").write_bytes(b"changed: still not the model")
    assert generation_fingerprint(cfg).key == fp.key
    (model / "model.safetensors").write_bytes(b"weights-2, other size")
    assert generation_fingerprint(cfg).changes(fp) == ["inputs.generator"]
    backend = ScriptedBackend(answer)
    run_steps(cfg, backend)
    assert len(backend.prompts) == sum(KINDS.values())


def test_filter_knob_refilters_stored_completions_without_the_backend(tmp_path):
    cfg, out = finished(tmp_path)
    raw = {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")}
    kept_before = {r["id"] for r in records(out, "textbook")}
    lengths = sorted(len(r["text"]) for r in records(out, "textbook"))
    cut = lengths[len(lengths) // 2]  # drop the shorter half now
    cfg2 = config(tmp_path, **{"synth.min_chars": cut + 1})
    backend = ScriptedBackend(answer)
    stage = run_steps(cfg2, backend)
    assert backend.calls == 0  # nothing generated
    assert {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")} == raw
    new_key = filter_fingerprint(cfg2, {}).key
    assert all(r["filter_fingerprint"] == new_key for r in samples(out))
    kept = {r["id"] for r in records(out, "textbook")}
    short = {r["id"] for r in records(out, ".dropped/textbook") if r["drop_reason"] == "too_short"}
    assert kept and short and kept | short == kept_before and not kept & short
    assert stage.step_stats("filter")["drops"]["textbook/too_short"] == len(short)
    # back to the old threshold: the samples come back, still without a backend call
    run_steps(config(tmp_path), backend)
    assert backend.calls == 0 and {r["id"] for r in records(out, "textbook")} == kept_before


OPERATIONAL = {"synth.batch_prompts": 1, "synth.shard_size": 1, "synth.report_samples": 1,
               "synth.exercise_timeout_s": 1.5, "synth.backend.timeout_s": 3.0,
               "synth.backend.max_concurrency": 2, "synth.backend.batch_size": 1,
               "synth.backend.device": "cpu", "synth.backend.cache": False}


def test_operational_knobs_recompute_nothing(tmp_path):
    cfg, out = finished(tmp_path)
    steps = {p.name: p.read_bytes() for p in (out / ".steps").glob("*.json")}
    files = {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")}
    cfg2 = config(tmp_path, **OPERATIONAL)
    assert generation_fingerprint(cfg2).key == generation_fingerprint(cfg).key
    backend = ScriptedBackend(answer)
    run_steps(cfg2, backend)
    assert backend.calls == 0
    assert {p.name: p.read_bytes() for p in (out / ".steps").glob("*.json")} == steps
    assert {f: f.read_bytes() for f in iter_jsonl_files(out / ".generated")} == files


def test_every_result_field_belongs_to_exactly_one_step():
    """A new SynthConfig knob must be placed in a step's fingerprint (or marked operational)."""
    groups = [fps.TOPIC_FIELDS, fps.PROMPT_FIELDS, fps.GENERATION_FIELDS, fps.FILTER_FIELDS]
    placed = [f for g in groups for f in g]
    results = [f.name for f in dataclasses.fields(SynthConfig) if not is_operational(f)]
    assert sorted(placed) == sorted(results)  # each once, none missing, none operational


class Flaky(ScriptedBackend):
    """Fails prompt 1 of the first call the way an HTTP backend does after its retries."""

    def generate(self, prompts, params, **kw):
        out = super().generate(prompts, params, **kw)
        if self.calls == 1:
            out[1] = Completion(text="", finish_reason="error", error="HTTP 503 from http://x/v1")
        return out


def test_a_failed_request_is_no_result_and_is_asked_again(tmp_path):
    """(issue 12: a transient error was written as a permanent `backend_error` drop.)"""
    cfg = config(tmp_path)
    stage = run_steps(cfg, Flaky(answer))
    out = stage.out
    assert len(records(out, ".generated")) == sum(KINDS.values()) - 1
    assert not [r for r in samples(out) if r.get("drop_reason") == "backend_error"]
    with pytest.raises(StageIncomplete, match=r"1 of 6 requests failed .*HTTP 503.*asked again"):
        stage.write_manifest()
    m = read_json(out / "manifest.json")  # written first: the error is counted
    assert m["counts"]["backend_errors"] == 1
    assert m["pending"]["generate"]["ids"] == ["textbook-0000001"]
    backend = ScriptedBackend(answer)
    stage = run_steps(cfg, backend)
    assert len(backend.prompts) == 1  # only the failed one
    m = stage.write_manifest()
    assert "pending" not in m and m["counts"]["backend_errors"] == 0
    assert m["counts"]["textbook/generated"] == 4
    assert sorted(r["id"] for r in samples(out)) == sorted(
        [f"textbook-{i:07d}" for i in range(4)] + [f"code_textbook-{i:07d}" for i in range(2)])


def test_http_backend_failures_through_the_stage(tmp_path):
    """A real HTTP server failing one request past its retries: that sample is pending, the
    batch is not lost; the next run asks only for it."""
    from phi_lib.backends.server import OpenAIServer
    from test_backend_http import EchoBackend

    with OpenAIServer(EchoBackend(), max_batch=1) as server:
        cfg = config(tmp_path, **{"synth.backend.kind": "openai", "synth.backend.model": "echo-1",
                                  "synth.backend.base_urls": [server.base_url],
                                  "synth.backend.max_retries": 1, "synth.backend.cache": False,
                                  "synth.backend.max_concurrency": 1, "synth.min_chars": 1})
        cfg.synth.kinds = {"textbook": 3}
        server.fail_next(2, 503)  # the first request, twice
        from phi_lib.synth import SynthStage

        stage = SynthStage(cfg)
        stage.backend().backoff_s = 0.01
        stage.topics(), stage.prompts(), stage.generate(progress=False), stage.filter()
        with pytest.raises(StageIncomplete, match="HTTP 503"):
            stage.write_manifest()
        assert [r["id"] for r in records(stage.out, ".generated")] == ["textbook-0000001",
                                                                      "textbook-0000002"]
        n = server.requests
        stage = SynthStage(cfg)
        stage.topics(), stage.prompts(), stage.generate(progress=False), stage.filter()
        assert server.requests == n + 1 and stage.write_manifest()["counts"]["textbook/generated"] == 3


def test_writer_prune_rewrites_shards_and_keeps_numbering(tmp_path):
    w = ShardedJsonlWriter(tmp_path, "shard", 2, "id")
    for i in range(5):
        w.write({"id": i})
    w.close()  # shards 00000 [0,1], 00001 [2,3], 00002 [4]
    w = ShardedJsonlWriter(tmp_path, "shard", 2, "id")
    assert w.prune(lambda r: r["id"] not in (1, 2, 3)) == 3  # 00001 emptied: deleted
    assert [p.name for p in w.shards()] == ["shard-00000.jsonl", "shard-00002.jsonl"]
    assert len(w) == 2 and not w.has(1) and w.has(4)
    w = ShardedJsonlWriter(tmp_path, "shard", 2, "id")  # a gap in the numbering
    w.write({"id": 9})
    w.write({"id": 8})  # seals a shard: the next free number, shard 00002 not overwritten
    w.close()
    got = {p.name: [json.loads(line)["id"] for line in p.read_text().splitlines()]
           for p in w.shards()}
    assert got == {"shard-00000.jsonl": [0], "shard-00002.jsonl": [4], "shard-00003.jsonl": [9, 8]}


@pytest.mark.slow  # the report embeds the samples with MiniLM
def test_steps_record_their_stats_and_the_manifest_merges_them(tmp_path):
    """The stage contract: each step writes `.steps/<step>.json`; the manifest (written from
    those files, here by a second stage object as after a kernel restart) has every step's
    numbers, the figures and the data files read; a rerun with nothing changed redoes nothing."""
    from phi_lib.synth import SynthStage

    cfg = config(tmp_path, **{"synth.min_chars": 150})
    cfg.synth.decontaminate_against = ["gsm8k"]
    run_steps(cfg, ScriptedBackend(answer), report=True)
    out = cfg.run_dir / "01_synthesize"
    assert sorted(p.stem for p in (out / ".steps").glob("*.json")) == [
        "filter", "generate", "prompts", "report", "topics"]
    steps = {p.name: p.read_bytes() for p in (out / ".steps").glob("*.json")}
    m = SynthStage(cfg).write_manifest()
    kept = len(records(out, "textbook"))
    assert m["counts"]["textbook/generated"] == 4 and m["counts"]["textbook/kept"] == kept
    assert m["counts"]["topics"] > 0 and m["counts"]["prompts"] == 6
    assert sum(m["drops"].values()) == 6 - kept - len(records(out, "code_textbook"))
    assert m["metrics"]["tokens"] == 50 * (6 - sum(m["drops"].values()))  # scripted: 50 each
    assert set(m["timings"]) == {"topics", "prompts", "generate", "filter", "report"}
    assert m["figures"] == ["counts.png", "audiences.png", "embeddings.png"]
    assert 0 < m["metrics"]["all/embedding_spread"] <= 2
    assert set(m["inputs"]) == {"benchmark:gsm8k", "generator"}
    backend = ScriptedBackend(answer)
    stage = run_steps(cfg, backend, report=True)
    assert backend.calls == 0
    assert {p.name: p.read_bytes() for p in (out / ".steps").glob("*.json")} == steps
    assert stage.write_manifest()["figures"] == m["figures"]
