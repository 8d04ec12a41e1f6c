"""Shared plumbing: data-folder resolution, atomic writes, JSONL accounting, resumable shards."""
import gzip
import json

import pytest

from phi_lib.io import ReadStats, ShardedJsonlWriter, atomic_write_text, read_jsonl, read_jsonl_folder
from phi_lib.paths import MissingDataError, data_path, resolve

pytestmark = pytest.mark.unit


def test_resolve_local_then_hub_then_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI_DATA", str(tmp_path))
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "x.jsonl").write_text("{}\n")
    assert resolve("benchmarks/x.jsonl") == tmp_path / "benchmarks" / "x.jsonl"
    assert resolve("benchmarks/y.jsonl", hub="org/y", hub_loader=lambda h: f"hub:{h}") == "hub:org/y"

    def offline(name):
        raise ConnectionError("no route to huggingface.co")

    with pytest.raises(MissingDataError) as e:
        resolve("benchmarks/y.jsonl", hub="org/y", hub_loader=offline)
    msg = str(e.value)
    assert str(tmp_path / "benchmarks" / "y.jsonl") in msg and "'org/y'" in msg and "no route" in msg
    with pytest.raises(MissingDataError, match="no hub fallback"):
        resolve("benchmarks/y.jsonl")


def test_no_data_folder_is_named(monkeypatch, tmp_path):
    import phi_lib.paths

    monkeypatch.delenv("PHI_DATA", raising=False)
    monkeypatch.setattr(phi_lib.paths, "project_root", lambda: tmp_path / "checkout")
    assert data_path("tokenizers") is None
    with pytest.raises(MissingDataError, match="no data folder is set"):
        resolve("tokenizers/gpt2")


def test_shared_data_folder_is_found():
    assert data_path("tokenizers/codegen-350M-mono/tokenizer.json") is not None


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    class Boom(Exception):
        pass

    from phi_lib.io import atomic_open

    with pytest.raises(Boom):
        with atomic_open(p) as f:
            f.write("half")
            raise Boom
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_read_jsonl_counts_corrupt_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\nnot json\n[1, 2]\n\n{"text": "b"}\n')
    stats = ReadStats()
    assert [r["text"] for r in read_jsonl(p, stats)] == ["a", "b"]
    assert stats.records == 2 and stats.n_corrupt == 2
    assert stats.corrupt[0][1] == 2 and "invalid JSON" in stats.corrupt[0][2]
    assert "2 corrupt" in stats.summary()


def test_read_truncated_gzip_is_reported(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    blob = gzip.compress(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(2000)))
    p.write_bytes(blob[: len(blob) // 2])
    stats = ReadStats()
    got = list(read_jsonl(p, stats))
    assert 0 < len(got) < 2000 and stats.n_corrupt >= 1
    assert "unreadable" in stats.corrupt[-1][2]


def test_sharded_writer_resumes_without_loss_or_duplicates(tmp_path):
    w = ShardedJsonlWriter(tmp_path, shard_size=3)
    for i in range(7):
        w.write({"id": i})
    # killed here: shards 0 and 1 sealed, record 6 only in the partial file (no close())
    w2 = ShardedJsonlWriter(tmp_path, shard_size=3)
    assert len(w2) == 7 and w2.has(6)
    for i in range(10):  # the rerun tries everything again
        w2.write({"id": i})
    w2.close()
    ids = [r["id"] for s in w2.shards() for r in read_jsonl(s)]
    assert sorted(ids) == list(range(10))


def test_sharded_writer_drops_torn_last_line(tmp_path):
    w = ShardedJsonlWriter(tmp_path, shard_size=100)
    w.write({"id": "a"})
    w.write({"id": "b"})
    with open(tmp_path / ".shard.partial", "a") as f:
        f.write('{"id": "c", "te')  # killed mid-write
    w2 = ShardedJsonlWriter(tmp_path, shard_size=100)
    assert w2.has("a") and w2.has("b") and not w2.has("c")


def test_shared_beside_the_checkout_is_the_default(monkeypatch, tmp_path):
    import phi_lib.paths

    (tmp_path / "shared" / "benchmarks").mkdir(parents=True)
    monkeypatch.delenv("PHI_DATA", raising=False)
    monkeypatch.setattr(phi_lib.paths, "project_root", lambda: tmp_path / "checkout")
    assert phi_lib.paths.data_dir() == tmp_path / "shared"
    assert phi_lib.paths.data_dir("elsewhere") == tmp_path / "checkout" / "elsewhere"


def test_read_jsonl_folder_reads_shards_back_and_counts_corrupt_lines(tmp_path):
    assert list(read_jsonl_folder(tmp_path / "not-yet")) == []  # a stage that has not run
    with ShardedJsonlWriter(tmp_path / "out", "shard", shard_size=2) as w:
        for i in range(5):
            w.write({"id": str(i)})
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "x.jsonl").write_text('{"id": "5"}\n{broken\n')
    (tmp_path / "out" / ".hidden.jsonl").write_text('{"id": "h"}\n')
    stats = ReadStats()
    ids = [r["id"] for r in read_jsonl_folder(tmp_path / "out", stats)]
    assert ids == ["0", "1", "2", "3", "4", "5"] and stats.n_corrupt == 1


def test_save_figure_writes_whole_files_only(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phi_lib.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "plots" / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figure(fig, tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    # a failure while drawing leaves the previous file and no temp file behind
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        save_figure(fig, png)
    assert png.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in png.parent.iterdir()) == ["a.png"]


def test_manifest_stays_strict_json_with_undefined_metrics(tmp_path):
    import json

    from phi_lib.config import load
    from phi_lib.io import write_manifest
    from phi_lib.paths import project_root

    cfg = load(project_root() / "params" / "smoke.yaml", {"run.output_root": str(tmp_path)})
    write_manifest(tmp_path, cfg, "02", metrics={"web/roc_auc": float("nan"), "web/f1": 0.5})

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    man = json.loads((tmp_path / "manifest.json").read_text(), parse_constant=no_constants)
    assert man["metrics"] == {"web/roc_auc": None, "web/f1": 0.5}
    assert man["undefined_metrics"] == ["web/roc_auc"]


def test_read_keyed_returns_records_in_key_order(tmp_path):
    from phi_lib.io import ReadStats, ShardedJsonlWriter, read_keyed

    with ShardedJsonlWriter(tmp_path, "grades", shard_size=2, key_field="item") as w:
        for k in ("a", "b", "c"):
            w.write({"item": k, "v": k.upper()})
    (tmp_path / "grades-00009.jsonl").write_text('{"item": "b", "v": "B2"}\n{torn\n')
    stats = ReadStats()
    got = read_keyed(tmp_path, "item", ["c", "zzz", "b"], stats)
    assert [r["v"] for r in got] == ["C", "B2"] and stats.n_corrupt == 1  # last write wins
    assert sorted(r["item"] for r in read_keyed(tmp_path, "item")) == ["a", "b", "c"]
