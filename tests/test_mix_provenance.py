"""Stage 03 provenance: what the packed mixture is a function of, and nothing else.

Unit tests on constructed corpora: each result-affecting knob changes the data fingerprint
(and names itself), each operational knob leaves it alone; a current pack is reused, a stale
one rewritten with no old shard left; the shard split does not change what a reader sees.
Runner tests (papermill, on a copy of the smoke run): a changed knob repacks and makes stage
05 stale, an operational one is skipped, a run killed during tokenization resumes cleanly.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phi_lib.data import MixBuilder
from phi_lib.io import read_json
from phi_lib.packed import PackedDataset, read_index
from test_mix_fixtures import build, corpora, make_docs, mix_config, packed, write_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _sources(data_tmp, alpha=0.6):
    return {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": alpha},
            "beta": {"path": str(data_tmp / "data/corpora/beta"), "weight": round(1 - alpha, 6)}}


def _shards(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.bin"))}


@pytest.mark.unit
def test_result_knobs_change_the_data_fingerprint_operational_knobs_do_not(tmp_path, corpora):  # noqa: F811
    data_tmp, _ = corpora
    base = dict(total_tokens=4000, seq_len=16, val_fraction=0.1)

    def fp(sources=None, seed=7, **mix):
        cfg = mix_config(tmp_path, sources or _sources(data_tmp), **{**base, **mix})
        cfg.run.seed = seed
        return MixBuilder(cfg, tmp_path / "o", progress=False).data_fingerprint()

    ref = fp()
    assert fp().key == ref.key
    changed = {"weights": fp(_sources(data_tmp, 0.7)), "total_tokens": fp(total_tokens=5000),
               "seq_len": fp(seq_len=32), "tokenizer": fp(tokenizer="gpt2"),
               "val_fraction": fp(val_fraction=0.2), "seed": fp(seed=8)}
    assert changed["weights"].changes(ref) == ["mix.sources.alpha.weight", "mix.sources.beta.weight"]
    assert changed["total_tokens"].changes(ref) == ["mix.total_tokens"]
    assert changed["seq_len"].changes(ref) == ["mix.seq_len"]
    assert changed["val_fraction"].changes(ref) == ["mix.val_fraction"]
    # (the seed is in the upstream stages' fingerprints too)
    assert changed["seed"].changes(ref) == ["run.seed", "inputs.01_synthesize", "inputs.02_filter_web"]
    # another tokenizer: the name, and the token caches (keyed by the tokenizer files' digest)
    assert changed["tokenizer"].changes(ref) == ["model.tokenizer", "inputs.tokens/main/alpha",
                                                 "inputs.tokens/main/beta"]
    for knob, value in (("num_proc", 2), ("batch_docs", 7), ("shard_tokens", 16 * 3),
                        ("max_epochs_warning", 1.5)):
        assert fp(**{knob: value}).key == ref.key, f"operational mix.{knob} changed the fingerprint"


@pytest.mark.unit
def test_token_cache_key_follows_file_contents_not_mtimes(tmp_path):
    docs = make_docs(20, 3, "doc")
    path = write_jsonl(tmp_path / "data" / "corpora" / "c" / "a.jsonl", docs)
    cfg = mix_config(tmp_path, {"c": {"path": "corpora/c", "weight": 1.0}}, total_tokens=300, seq_len=16)
    key = MixBuilder(cfg, tmp_path / "o").cache_keys()["main/c"]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    assert MixBuilder(cfg, tmp_path / "o").cache_keys()["main/c"] == key
    text = path.read_text()
    path.write_text(text.replace("doc0:", "doc9:"))  # same size, new content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert path.stat().st_size == st.st_size
    assert MixBuilder(cfg, tmp_path / "o").cache_keys()["main/c"] != key


@pytest.mark.unit
def test_current_pack_is_reused_a_stale_one_rewritten_without_leftovers(tmp_path, corpora):  # noqa: F811
    data_tmp, _ = corpora
    base = dict(total_tokens=4000, seq_len=16, val_fraction=0.1, shard_tokens=16 * 40)
    a = build(mix_config(tmp_path, _sources(data_tmp), **base))
    out = a.out
    train0, val0 = _shards(out / "train"), _shards(out / "val")
    mix0 = read_json(out / "mix.json")
    assert len(train0) > 2 and mix0["fingerprint"]["key"] == a.data_fingerprint().key
    # the same results, an operational knob changed: nothing is rewritten
    b = build(mix_config(tmp_path, _sources(data_tmp), **{**base, "shard_tokens": 16 * 7, "num_proc": 2}))
    assert _shards(out / "train") == train0 and _shards(out / "val") == val0
    assert read_json(out / "mix.json") == mix0 and b.step_current("pack", a.data_fingerprint())

    # new weights: the training split is rewritten, every shard and index carry the new fingerprint
    c = build(mix_config(tmp_path, _sources(data_tmp, 0.3), **base))
    key = c.data_fingerprint().key
    assert key != mix0["fingerprint"]["key"]
    mix1 = read_json(out / "mix.json")
    assert mix1["fingerprint"]["key"] == key == c.step_fingerprint("pack")["key"]
    for split in ("train", "val"):
        index = read_index(out / split)
        assert index["fingerprint"]["key"] == key
        assert sorted(_shards(out / split)) == index["shards"]  # no shard of the old layout left
    assert all(train0.get(name) != t for name, t in _shards(out / "train").items())  # all new
    assert mix1["splits"]["train"]["content_digest"] != mix0["splits"]["train"]["content_digest"]
    alpha = [m["splits"]["train"]["tokens_by_source"]["alpha"] for m in (mix0, mix1)]
    assert alpha[1] < alpha[0]
    # held-out documents do not depend on the weights: the same windows, reused
    assert mix1["splits"]["val"]["content_digest"] == mix0["splits"]["val"]["content_digest"]
    man = read_json(out / "manifest.json")
    assert man["fingerprint"]["key"] == c.fingerprint.key
    assert man["metrics"]["share/alpha"] == pytest.approx(0.3, abs=0.03)

    # no validation split any more: the old one is removed, not left for a reader
    build(mix_config(tmp_path, _sources(data_tmp, 0.3), **{**base, "val_fraction": 0.0}))
    assert not (out / "val").exists() and "val" not in read_json(out / "mix.json")["splits"]


@pytest.mark.unit
def test_shard_split_does_not_change_what_a_reader_sees(tmp_path, packed):  # noqa: F811
    """`mix.shard_tokens` is operational: the windows, their order on every rank and the
    content digest are the same whatever the shard size."""
    builder, _ = packed
    cfg = builder.cfg
    other = mix_config(tmp_path, {n: {"path": str(s.path), "weight": cfg.mix.sources[n].weight}
                                  for n, s in builder.sources.items()},
                       total_tokens=cfg.mix.total_tokens, seq_len=cfg.mix.seq_len,
                       val_fraction=cfg.mix.val_fraction, shard_tokens=32 * 37)
    other.run.seed = cfg.run.seed
    b = build(other)
    for split in ("train", "val"):
        x, y = PackedDataset(builder.out, split), PackedDataset(b.out, split)
        assert x.index["windows_per_shard"] == 100 and y.index["windows_per_shard"] == 37
        assert x.index["content_digest"] == y.index["content_digest"]
        for rank in range(2):
            xs = [t for t, _ in _take(x.iter_batches(5, rank, 2, seed=3), 2 * len(x) // 10 + 1)]
            ys = [t for t, _ in _take(y.iter_batches(5, rank, 2, seed=3), 2 * len(y) // 10 + 1)]
            assert all(np.array_equal(p, q) for p, q in zip(xs, ys)) and len(xs) == len(ys)


def _take(it, n):
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------- through the runner
def _corrupt_counts(manifest: dict) -> dict:
    return {k: v for k, v in manifest["counts"].items() if k.endswith("/corrupt")}


@pytest.mark.notebooks
def test_smoke_mix_reads_only_data_records(smoke_run):
    """Stage 03 of the smoke run reads 01's and 02's data shards only: no corrupt record (it
    used to read 01's manifest.json and stage.json as records)."""
    run_dir = smoke_run.cfg.run_dir
    man = read_json(run_dir / "03_mix" / "manifest.json")
    assert set(_corrupt_counts(man).values()) == {0}, _corrupt_counts(man)
    synth_records = sum(1 for f in (run_dir / "01_synthesize").glob("*/*.jsonl")
                        for line in f.read_text().splitlines() if line.strip())
    assert man["counts"]["synthetic/records"] == synth_records
    assert man["drops"] == {"corrupt_record": 0, "empty_text": 0}
    assert {"textbooks", "tokenizer"} <= set(man["inputs"])  # corpus + tokenizer files registered


@pytest.mark.slow
def test_mix_knob_change_repacks_and_stales_training_operational_knob_skips(smoke_copy):
    from phi_lib.config import ConfigError
    from phi_lib.stages import STAGES

    mix = smoke_copy.run_dir / "03_mix"
    pack_mtime = (mix / ".steps" / "pack.json").stat().st_mtime_ns
    res = smoke_copy(["03"], {"mix.num_proc": 1, "mix.batch_docs": 64})  # operational
    assert [s.status for s in res.statuses if s.stage == "03"] == ["skipped"]
    assert (mix / ".steps" / "pack.json").stat().st_mtime_ns == pack_mtime

    old = {split: (read_index(mix / split), _shards(mix / split)) for split in ("train", "val")}
    old_key = read_json(mix / "mix.json")["fingerprint"]["key"]
    # training alone would read a mixture packed for another seq_len: refused, naming 03
    with pytest.raises(ConfigError, match=r"reads 03_mix, which is not current \(mix\.seq_len\)"):
        smoke_copy(["05"], {"mix.seq_len": 64})
    res = smoke_copy(["03"], {"mix.seq_len": 64})
    assert [s.status for s in res.statuses if s.stage == "03"] == ["done"]
    info = read_json(mix / "mix.json")
    key = info["fingerprint"]["key"]
    assert key != old_key and info["seq_len"] == 64 and info["fingerprint"]["config"]["mix"]["seq_len"] == 64
    for split in ("train", "val"):
        index = read_index(mix / split)
        assert index["seq_len"] == 64 and index["fingerprint"]["key"] == key
        assert sorted(_shards(mix / split)) == index["shards"]  # every shard on disk is listed
        for name in index["shards"]:  # ... and new: none of the seq_len-128 files is left
            assert old[split][1].get(name) != (mix / split / name).stat().st_mtime_ns
            assert (mix / split / name).stat().st_size == index["windows_per_shard"] * 64 * 2 or \
                name == index["shards"][-1]
        assert index["n_windows"] in (2 * old[split][0]["n_windows"], 2 * old[split][0]["n_windows"] + 1)
    assert len(PackedDataset(mix, "train")[0]) == 64
    man = read_json(mix / "manifest.json")
    assert man["config"]["mix"]["seq_len"] == 64
    assert man["fingerprint"]["key"] == STAGES["03"].fingerprint(res.cfg).key
    assert set(_corrupt_counts(man).values()) == {0}
    # stage 05 now reads outputs it was not trained on: stale, naming the mixture
    assert "inputs.03_mix" in STAGES["05"].stale_reasons(res.cfg)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


@pytest.mark.slow
def _start_and_kill_while_tokenizing(run_dir, cache, change) -> bool:
    """Stage 03 with `change`, kill -9'd (runner, kernel, tokenizer workers) once a new token
    cache is being written; whether the kill came before every cache was complete."""
    cmd = [sys.executable, "-m", "phi_lib", "run", str(ROOT / "params" / "smoke.yaml"), "--stages", "03",
           "-q", "--set", f"run.output_root={run_dir.parent}"] + [f"--set={k}={v}" for k, v in change.items()]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def new_tokens_written():
        for d in cache.iterdir() if cache.is_dir() else []:
            state = d / "state.json"
            being_written = not state.is_file() or not read_json(state).get("done")
            if being_written and (d / "tokens.bin").is_file() and (d / "tokens.bin").stat().st_size > 0:
                return True
        return False

    deadline = time.time() + 120
    while not new_tokens_written():
        assert proc.poll() is None, "the run ended before it tokenized anything"
        assert time.time() < deadline
        time.sleep(0.02)
    # the runner and, in their own sessions, the kernel and its tokenizer workers: every
    # process group this test started (never the test's own)
    groups = set()
    for pid in [proc.pid] + _descendants(proc.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups - {os.getpgid(0)}:
        os.killpg(group, signal.SIGKILL)
    proc.wait()
    states = [read_json(d / "state.json") if (d / "state.json").is_file() else {} for d in cache.iterdir()]
    return not all(s.get("done") for s in states)


def test_mix_killed_during_tokenization_after_a_change_resumes_without_mixing(smoke_copy, tmp_path):
    """kill -9 (runner, kernel, tokenizer workers) while the new tokenizer's caches are being
    written; the rerun finishes with caches identical to a fresh tokenization and shards that
    all carry the new fingerprint."""
    from phi_lib.data.tokenize import cache_fingerprint, tokenize_source
    from phi_lib.data.tokenizer import load_tokenizer

    run_dir = smoke_copy.run_dir
    mix = run_dir / "03_mix"
    cache = mix / ".cache" / "tokenized"
    for tokenizer in ("gpt2", "phi-3-mini"):  # a second try if the first kill came too late
        change = {"model.tokenizer": tokenizer, "mix.batch_docs": 16}  # small batches: a longer window to kill in
        if _start_and_kill_while_tokenizing(run_dir, cache, change):
            break
    else:
        pytest.fail("killed too late twice: tokenization finished before the kill reached it")
    assert not (mix / "stage.json").exists()

    res = smoke_copy(["03"], change)
    assert [s.status for s in res.statuses if s.stage == "03"] == ["done"]
    b = MixBuilder(res.cfg, mix, progress=False)
    tok = load_tokenizer(tokenizer)
    for name, src in b.sources.items():
        state = read_json(cache / name / "state.json")
        assert state["done"] and state["fingerprint"]["key"] == cache_fingerprint(src, tokenizer).key
        fresh = tokenize_source(src, tmp_path / name, tokenizer, progress=False)
        got = np.fromfile(cache / name / "tokens.bin", dtype=np.uint16)
        assert np.array_equal(got, np.asarray(fresh.tokens)), f"{name}: old and new tokens mixed"
    key = read_json(mix / "mix.json")["fingerprint"]["key"]
    for split in ("train", "val"):
        index = read_index(mix / split)
        assert index["fingerprint"]["key"] == key and sorted(_shards(mix / split)) == index["shards"]
    man = read_json(mix / "manifest.json")
    assert man["config"]["model.tokenizer"] == tokenizer and man["counts"]["textbooks/docs"] > 0
    assert read_json(mix / "mix.json")["vocab_size"] == len(tok)
