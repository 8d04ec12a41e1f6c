"""Stage 02 through the runner (papermill included), on a private copy of the smoke run: a
changed knob recomputes what it changes and nothing else and stage 03 follows; an
operational knob recomputes nothing; a grown corpus is scored by the same classifier; a run
killed with SIGKILL while rescoring for a new classifier resumes without mixing two
classifiers' scores, and none of the old ones remains. (Library-level twins of each, with
stand-in models, are in test_filter_provenance.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def steps(out: Path) -> dict:
    """step -> (finished_at, fingerprint key): what ran, and with what."""
    return {p.stem: (d["finished_at"], d["fingerprint"]["key"])
            for p in sorted((out / ".steps").glob("*.json")) for d in [json.loads(p.read_text())]}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def scores(out: Path, kind: str) -> list[dict]:
    return records(out / "scored" / kind)


def classifier_key(out: Path, kind: str) -> str:
    folder = "classifier" if kind == "web" else "classifier_code"
    return json.loads((out / folder / "classifier.json").read_text())["fingerprint"]["key"]


def marker(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "stage.json").read_text())


def status(result, stage: str) -> str:
    return next(s.status for s in result.statuses if s.stage == stage)


def assert_one_classifier(out: Path):
    """Every candidate scored once, by the classifier saved now (no stale score left)."""
    for kind in ("web", "code"):
        recs, key = scores(out, kind), classifier_key(out, kind)
        cand = {r["key"] for r in records(out / "candidates" / kind)}
        assert sorted(r["key"] for r in recs) == sorted(cand), kind
        assert {r["classifier"] for r in recs} == {key}, kind


def complete_lines(path: Path) -> list[str]:
    """The whole lines of a file being appended to (a torn last line left out)."""
    try:
        return path.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the kernel papermill started runs in its own session)."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_knob_changes_through_the_runner(smoke_copy):
    """One copy of the smoke run, five reruns: each asserts what recomputed and what did not."""
    run_dir = smoke_copy.run_dir
    out = run_dir / "02_filter_web"
    s0, mix0 = steps(out), marker(run_dir, "03_mix")["outputs_digest"]
    kept0 = records(out / "kept")
    key = classifier_key(out, "web")
    old = {r["key"]: r["score"] for r in scores(out, "web")}

    # 1. keep_fraction: the same scores, another cut -> kept/ rewritten, stage 03 remixes
    r = smoke_copy(["02", "03"], {"filter.keep_fraction": 0.5})
    assert status(r, "02") == status(r, "03") == "done"
    s1 = steps(out)
    assert {k for k in s1 if s1[k] != s0[k]} == {"keep_web", "keep_code", "evaluate_web"}  # F1 at the cut
    assert len(records(out / "kept")) > len(kept0)
    assert marker(run_dir, "03_mix")["outputs_digest"] != mix0
    assert_one_classifier(out)

    # 2. operational knobs: the runner skips the stage, no step reran
    r = smoke_copy(["02"], {"filter.keep_fraction": 0.5, "filter.score_batch_size": 7,
                            "filter.embed_batch_size": 3, "filter.shard_size": 50,
                            "filter.annotator.timeout_s": 5.0, "filter.annotator.batch_size": 2,
                            "filter.annotator.max_concurrency": 1, "filter.annotator.device": "cpu"})
    assert status(r, "02") == "skipped" and steps(out) == s1

    # 3. max_docs grows with the annotation pool fixed: same sample and classifier, new docs only
    grown = {"filter.keep_fraction": 0.5, "filter.max_docs": 305, "filter.annotate_pool_docs": 300}
    r = smoke_copy(["02"], grown)
    s3 = steps(out)
    assert status(r, "02") == "done" and classifier_key(out, "web") == key
    assert s3["train_web"] == s1["train_web"] and s3["annotate_web"][1] != s1["annotate_web"][1]
    assert json.loads((out / ".steps" / "annotate_web.json").read_text())["asked"] == 0
    new = {r["key"]: r for r in scores(out, "web")}
    assert old.keys() < new.keys() and all(new[k]["score"] == s for k, s in old.items())
    stats = json.loads((out / ".steps" / "score_web.json").read_text())
    assert stats["scored_now"] == len(new) - len(old) and stats["stale_removed"] == 0
    assert_one_classifier(out)

    # 4. a new classifier (other reference labels), the run killed with SIGKILL once its first
    # scores are on disk
    changed = {**grown, "filter.n_reference": 23, "filter.score_batch_size": 4}
    sets = [f"--set={k}={v}" for k, v in {**changed, "run.output_root": str(run_dir.parent)}.items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "phi_lib", "run", str(ROOT / "params" / "smoke.yaml"),
                             "--stages", "02", "-q", *sets], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "scored" / "web" / ".scored.partial"
    deadline = time.time() + 300
    while not (lines := complete_lines(partial)) or json.loads(lines[0])["classifier"] == key:
        assert proc.poll() is None, "the run ended before it was killed"
        assert time.time() < deadline
        time.sleep(0.02)
    for pid in [*_descendants(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    new_key = classifier_key(out, "web")
    on_disk = scores(out, "web") + [json.loads(x) for x in complete_lines(partial)]
    assert new_key != key and 0 < len(on_disk) < len(new)  # killed midway
    assert {r["classifier"] for r in on_disk} == {new_key}  # the old scores went first

    # 5. resume (scoring in bigger batches: operational): the killed run's scores kept, the
    # rest scored by the same new classifier, none of the old; kept/ follows
    r = smoke_copy(["02"], {**changed, "filter.score_batch_size": 256})
    assert status(r, "02") == "done"
    stats = json.loads((out / ".steps" / "score_web.json").read_text())
    assert stats["scored_now"] == len(new) - len(on_disk)
    assert_one_classifier(out)
    assert json.loads((out / "kept.json").read_text())["classifier"] == new_key
    assert {r["score"] for r in records(out / "kept")} != {r["score"] for r in kept0}
