"""Strict config loading: every failure mode names the key path before any work starts."""
import dataclasses
import subprocess
import sys

import pytest

from phi_lib import config as C
from phi_lib.config import ConfigError, load

pytestmark = pytest.mark.unit


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_load_and_validate():
    cfg = load({})
    assert cfg.train.betas == [0.9, 0.98] and cfg.train.eps == 1e-7  # phi-1.5's Adam
    assert cfg.mix.seq_len == 2048


def test_every_field_has_a_docstring():
    for cls in [c for c in vars(C).values() if dataclasses.is_dataclass(c) and isinstance(c, type)]:
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: fields without docstring: {missing}"


def test_one_section_per_stage_plus_run():
    names = [f.name for f in dataclasses.fields(C.Config)]
    for section in ("run", "synth", "filter", "mix", "model", "train", "evaluate", "toxicity"):
        assert section in names


def test_unknown_key_with_did_you_mean(tmp_path):
    p = write(tmp_path, "p.yaml", "train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"^train\.max_stepz: unknown key 'max_stepz'; did you mean 'max_steps'"):
        load(p)


def test_unknown_section(tmp_path):
    p = write(tmp_path, "p.yaml", "trian: {}\n")
    with pytest.raises(ConfigError, match=r"^trian: .*did you mean 'train'"):
        load(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "p.yaml", "train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"^train\.max_steps: expected int, got str 'lots'"):
        load(p)
    p = write(tmp_path, "q.yaml", "evaluate:\n  tasks: arc_easy\n")
    with pytest.raises(ConfigError, match=r"^evaluate\.tasks: expected a list"):
        load(p)


def test_negative_steps(tmp_path):
    p = write(tmp_path, "p.yaml", "train:\n  max_steps: -5\n")
    with pytest.raises(ConfigError, match=r"^train\.max_steps: must be > 0, got -5"):
        load(p)


def test_mixture_weights_must_sum_to_one(tmp_path):
    p = write(tmp_path, "p.yaml", "mix:\n  sources:\n    a: {path: x, weight: 0.5}\n"
                                  "    b: {path: y, weight: 0.6}\n")
    with pytest.raises(ConfigError, match=r"^mix\.sources: mixture weights must sum to 1, got 1\.1"):
        load(p)


def test_missing_extends_target(tmp_path):
    p = write(tmp_path, "p.yaml", "extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"extends: params file .*nope\.yaml.* not found"):
        load(p)


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(b)


def test_extends_merges_and_mixture_replaces(tmp_path):
    write(tmp_path, "base.yaml", "train: {lr: 0.001, max_steps: 10}\n"
                                 "mix:\n  sources:\n    a: {path: x, weight: 0.5}\n    b: {path: y, weight: 0.5}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain: {max_steps: 20}\n"
                                          "mix:\n  sources:\n    c: {path: z, weight: 1.0}\n")
    cfg = load(child)
    assert cfg.train.lr == 0.001 and cfg.train.max_steps == 20  # deep merge
    assert list(cfg.mix.sources) == ["c"]  # a mixture is replaced as a whole


def test_set_overrides_are_coerced():
    cfg = load({}, {"train.max_steps": "20", "train.lr": "3e-4", "train.overlap_comm": "false",
                    "evaluate.tasks": "arc_easy,piqa", "train.betas": "[0.9, 0.95]",
                    "evaluate.limit": "null", "run.data_dir": "/data"})
    assert cfg.train.max_steps == 20 and cfg.train.lr == 3e-4
    assert cfg.train.overlap_comm is False
    assert cfg.evaluate.tasks == ["arc_easy", "piqa"]
    assert cfg.train.betas == [0.9, 0.95]
    assert cfg.evaluate.limit is None and cfg.run.data_dir == "/data"


def test_set_into_mixture_source():
    base = {"mix": {"sources": {"a": {"path": "x", "weight": 0.5}, "b": {"path": "y", "weight": 0.5}}}}
    with pytest.raises(ConfigError, match=r"^mix\.sources: mixture weights must sum to 1"):
        load(base, {"mix.sources.a.weight": "0.6"})
    cfg = load(base, {"mix.sources.a.weight": "0.6", "mix.sources.b.weight": "0.4"})
    assert cfg.mix.sources["a"].weight == 0.6


def test_set_unknown_key_and_bad_value():
    with pytest.raises(ConfigError, match=r"^train\.max_stepz: unknown key.*did you mean 'max_steps'"):
        load({}, {"train.max_stepz": "3"})
    with pytest.raises(ConfigError, match=r"^train\.max_steps: expected int, got str 'abc'"):
        load({}, {"train.max_steps": "abc"})
    with pytest.raises(ConfigError, match=r"^train\.precision: unknown value 'fp8'"):
        load({}, {"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        C.parse_set(["train.max_steps"])


def test_unknown_task_and_preset():
    with pytest.raises(ConfigError, match=r"^evaluate\.tasks\.0: unknown task 'arc_esy'; did you mean 'arc_easy'"):
        load({"evaluate": {"tasks": ["arc_esy"]}})
    with pytest.raises(ConfigError, match=r"^model\.preset: unknown value 'phi-15'"):
        load({"model": {"preset": "phi-15"}})


def test_hash_is_stable_and_ignores_run_location():
    a = load({"run": {"name": "a", "output_root": "/x"}})
    b = load({"run": {"name": "b", "output_root": "/y"}})
    assert a.hash() == b.hash()
    assert a.hash() == load({"run": {"name": "a"}}).hash()
    c = load({}, {"train.max_steps": "7"})
    assert c.hash() != a.hash()
    assert c.section_hash("synth") == a.section_hash("synth")  # only train changed


def test_stage_hash_follows_dependencies():
    from phi_lib.stages import STAGES

    a = load({})
    b = load({}, {"train.max_steps": "7"})
    assert STAGES["01"].config_hash(a) == STAGES["01"].config_hash(b)
    assert STAGES["05"].config_hash(a) != STAGES["05"].config_hash(b)
    assert STAGES["06"].config_hash(a) != STAGES["06"].config_hash(b)  # reads 05's checkpoint
    c = load({}, {"synth.min_chars": "5"})
    assert STAGES["03"].config_hash(a) != STAGES["03"].config_hash(c)  # reads 01's output


def test_finetune_reads_a_set_that_stage_03_packs():
    with pytest.raises(ConfigError, match=r"^train\.finetune\.enabled: .*03_mix/finetune/, but "
                                          r"mix\.finetune\.source is not set"):
        load({}, {"train.finetune.enabled": "true"})
    with pytest.raises(ConfigError, match=r"^train\.finetune\.source: unknown key 'source'.*; "
                                          r"it moved to mix\.finetune\.source$"):
        load({"train": {"finetune": {"source": "01_synthesize/code_exercises"}}})
    with pytest.raises(ConfigError, match=r"^mix\.finetune\.total_tokens: 10 is less than one "
                                          r"window of seq_len=16"):
        load({}, {"mix.finetune.source": "x", "mix.finetune.total_tokens": "10",
                  "mix.seq_len": "16", "mix.total_tokens": "100"})
    with pytest.raises(ConfigError, match=r"^mix\.finetune\.source: is empty"):
        load({}, {"mix.finetune.source": " "})


def test_finetune_budget_defaults_to_what_the_finetune_consumes_under_stage_03s_hash():
    from phi_lib.stages import STAGES

    def ft(**o):
        return load({}, {"mix.finetune.source": "x", **o})

    a = ft(**{"train.finetune.max_steps": "10", "train.finetune.global_batch_size": "4"})
    assert a.mix.finetune.total_tokens == 10 * 4 * 2048  # steps x batch x mix.seq_len
    b = ft(**{"train.finetune.max_steps": "20", "train.finetune.global_batch_size": "4"})
    assert STAGES["03"].config_hash(a) != STAGES["03"].config_hash(b)  # a longer finetune repacks
    c = ft(**{"mix.finetune.total_tokens": "4096", "train.finetune.max_steps": "20"})
    assert c.mix.finetune.total_tokens == 4096  # an explicit budget stays
    # without a finetune set the finetune's settings leave stage 03 alone
    assert STAGES["03"].config_hash(load({})) == STAGES["03"].config_hash(
        load({}, {"train.finetune.max_steps": "20"}))


def test_cli_bad_params_is_one_line_naming_the_key(tmp_path):
    p = write(tmp_path, "bad.yaml", "train:\n  warmup_steps: 900\n  max_steps: 100\n")
    r = subprocess.run([sys.executable, "-m", "phi_lib", "run", str(p)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: train.warmup_steps: 900 exceeds max_steps 100"
