"""The provenance rule at the fingerprint level: operational fields never change a stage's
fingerprint, every other field changes its own stage's and every downstream stage's; content
digests see contents, not names or times. (Through the runner: tests/test_runner.py and
each stage's provenance tests.)"""
import dataclasses
import os
import time
import typing

import pytest

from phi_lib.config import Config, load
from phi_lib.provenance import (Fingerprint, StaleArtifact, model_identity, operational_paths,
                                path_digest, require_current, results_view)
from phi_lib.stages import STAGES

pytestmark = pytest.mark.unit


def _leaf_paths(cls, prefix=""):
    """Dotted paths of every leaf field (nested dataclasses walked)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaf_paths(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _flip(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return value + "_x"
    if value is None:
        return "x"
    if isinstance(value, list):
        return value + ["x"]
    if isinstance(value, dict):
        return {**value, "x_key": 1}
    raise TypeError(type(value))


def _flipped(cfg, path):
    obj = cfg
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, _flip(getattr(obj, leaf)))
    return cfg


def _keys(cfg):
    return {n: s.config_hash(cfg) for n, s in STAGES.items()}


def _downstream(number):
    out = {number}
    for n, s in STAGES.items():
        if out & set(s.upstream):
            out.add(n)
    return out


OPERATIONAL = operational_paths(Config)
INPUT_LOCATIONS = ("run.data_dir",)
"""Operational as config, but it names where inputs are: a stage fingerprint holds the resolved
data folder as an input (a rerun then recomputes only what the files' digests say changed)."""
RESULT_FIELDS = [p for p in _leaf_paths(Config) if p not in OPERATIONAL and p != "params_file"]


def _base():
    from phi_lib.paths import project_root

    return load(project_root() / "params" / "smoke.yaml")


def test_the_split_is_documented_and_plausible():
    assert {"run.name", "run.output_root", "evaluate.batch_size", "train.master_port",
            "synth.backend.max_concurrency", "filter.annotator.timeout_s",
            "train.log_every", "evaluate.device"} <= set(OPERATIONAL)
    assert {"run.seed", "train.lr", "mix.seq_len", "evaluate.limit", "synth.sampling.temperature",
            "filter.classifier", "model.hidden_size", "toxicity.per_group"} <= set(RESULT_FIELDS)


@pytest.mark.parametrize("path", [p for p in OPERATIONAL if p not in INPUT_LOCATIONS])
def test_an_operational_field_changes_no_fingerprint(path):
    base = _base()
    assert _keys(_flipped(_base(), path)) == _keys(base)


@pytest.mark.parametrize("path", RESULT_FIELDS)
def test_a_result_field_changes_its_stage_and_everything_downstream(path):
    base = _base()
    owners = {n for n, s in STAGES.items()  # a stage owns whole sections or dotted keys of one
              if any(path == k or path.startswith(k + ".") for k in s.sections)} or set(STAGES)
    expect = set().union(*(_downstream(n) for n in owners))
    before, after = _keys(base), _keys(_flipped(_base(), path))
    assert {n for n in STAGES if before[n] != after[n]} == expect


def test_another_data_folder_is_another_input(tmp_path):
    moved = _base()
    moved.run.data_dir = str(tmp_path)
    assert all(STAGES[n].fingerprint(moved).changes(STAGES[n].fingerprint(_base()))[-1]
               == "inputs.data_dir" for n in STAGES)


def test_changes_name_dotted_keys_and_inputs():
    a = Fingerprint.of(config={"train": {"lr": 1e-3, "betas": [0.9, 0.98]}}, inputs={"data": "d1"})
    b = Fingerprint.of(config={"train": {"lr": 3e-3, "betas": [0.9, 0.98]}}, inputs={"data": "d2"})
    assert b.changes(a) == ["train.lr", "inputs.data"]
    assert b.changes(a.to_dict()) == ["train.lr", "inputs.data"]
    assert a.changes(a) == [] and a.key != b.key
    with pytest.raises(StaleArtifact, match=r"checkpoint in /x was made with a different config "
                                            r"\(train\.lr, inputs\.data changed\): keep it by "
                                            r"giving this config a new `run\.name`, or discard "
                                            r"it and recompute with --force"):
        require_current(a.to_dict(), b, "checkpoint", "/x")
    require_current(None, b, "checkpoint", "/x")  # nothing there: nothing stale


def test_results_view_drops_operational_fields_recursively():
    view = results_view(_base().synth)
    assert "batch_prompts" not in view and "max_concurrency" not in view["backend"]
    assert view["backend"]["model"] and "temperature" in view["sampling"]


def test_digests_follow_content_not_names_or_times(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("one")
    (d / "sub" / "b.txt").write_text("two")
    (d / ".cache").mkdir()
    first = path_digest(d)
    (d / ".cache" / "junk").write_text("working state")  # hidden: not content
    os.utime(d / "a.txt", (time.time() + 5, time.time() + 5))
    assert path_digest(d) == first
    (d / "a.txt").write_text("ONE")
    assert path_digest(d) != first
    (d / "a.txt").write_text("one")
    assert path_digest(d) == first
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")  # a renamed file is a different tree
    assert path_digest(d) != first
    assert path_digest(tmp_path / "nothing") == "missing"


def test_model_identity_is_the_weights_not_the_name(tmp_path):
    m = tmp_path / "step-40"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"\x00" * 64)
    (m / "optimizer.pt").write_bytes(b"state")
    ident = model_identity(m)
    (m / "optimizer.pt").write_bytes(b"other state")  # not part of the model
    assert model_identity(m) == ident
    (m / "model.safetensors").write_bytes(b"\x01" * 64)
    assert model_identity(m) != ident
    assert model_identity(None, "org/model") == "name:org/model"
