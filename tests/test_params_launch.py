"""The phi-2 and phi-3 recipes, dry: each params file builds its model on the meta device at the
published size, its ZeRO stage / micro batch / activation checkpointing are the planner's fit
for the 80 GB GPUs it names, and it produces its DeepSpeed config and launch command without
running anything."""
import json
import os
from pathlib import Path

import pytest
import torch

from phi_lib.config import load
from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.model import PhiConfig, build_model
from phi_lib.model.planning import fit_training, memory_per_gpu
from phi_lib.paths import project_root
from phi_lib.train.launcher import CONFIG_FILE, command, prepare

pytestmark = pytest.mark.unit
MINI, SMALL, MEDIUM = 3_821_079_552, 7_392_272_384, 13_960_238_080
RECIPES = {  # file: (published parameters, tokenizer, context, training tokens)
    "phi-2.yaml": (2_779_683_840, "codegen-350M-mono", 2048, 1_400_000_000_000),
    "phi-3-mini.yaml": (MINI, "phi-3-mini", 4096, 3_300_000_000_000),
    "phi-3-mini-128k.yaml": (MINI, "phi-3-mini", 131072, None),
    "phi-3.5-mini.yaml": (MINI, "phi-3-mini", 131072, 3_400_000_000_000),
    "phi-3-small.yaml": (SMALL, "phi-3-small", 8192, 4_800_000_000_000),
    "phi-3-medium.yaml": (MEDIUM, "phi-3-mini", 4096, 4_800_000_000_000),
    "phi-3-medium-128k.yaml": (MEDIUM, "phi-3-mini", 131072, None),
    "phi-3-vision.yaml": (4_146_621_440, "phi-3-vision", 131072, 500_000_000_000),
}


def recipe(name, tmp_path):
    return load(project_root() / "params" / name, {"run.output_root": str(tmp_path)})


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_builds_its_published_model(name, tmp_path):
    size, tokenizer, context, tokens = RECIPES[name]
    cfg = recipe(name, tmp_path)
    model_cfg = PhiConfig.from_model_config(cfg.model)
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model(model_cfg).parameters()) == size
    assert model_cfg.max_position_embeddings == context >= cfg.mix.seq_len
    assert cfg.model.tokenizer == tokenizer and len(load_tokenizer(tokenizer)) <= model_cfg.vocab_size
    if tokens is not None:
        assert cfg.mix.total_tokens == tokens
        steps = -(-tokens // (cfg.train.global_batch_size * cfg.mix.seq_len))
        assert cfg.train.max_steps == steps  # the budget, in whole steps
    if name.startswith("phi-3"):
        assert cfg.train.precision == "bf16"


@pytest.mark.parametrize("name", list(RECIPES))
def test_parallelism_is_the_planners_fit(name, tmp_path):
    cfg = recipe(name, tmp_path)
    tc = cfg.train
    model_cfg = PhiConfig.from_model_config(cfg.model)
    fit = fit_training(model_cfg, n_gpus=tc.world_size, seq_len=cfg.mix.seq_len,
                       global_batch_size=tc.global_batch_size, precision=tc.precision)
    assert (tc.zero_stage, tc.micro_batch_size, tc.activation_checkpointing) == (
        fit["zero_stage"], fit["micro_batch_size"], fit["activation_checkpointing"]), fit
    gb = memory_per_gpu(model_cfg, tc.zero_stage, tc.precision, tc.world_size, tc.micro_batch_size,
                        cfg.mix.seq_len, activation_checkpointing=tc.activation_checkpointing)["total"]
    assert gb <= 0.85 * 80  # fits the 80 GB A100/H100 `train.plan_gpu` names, with headroom
    assert cfg.model.gpus == tc.world_size  # notebook 04 plans memory for the GPUs stage 05 uses


@pytest.mark.parametrize("name", list(RECIPES))
def test_dry_run_writes_deepspeed_config_and_launch_command(name, tmp_path):
    cfg = recipe(name, tmp_path)
    tc = cfg.train
    out = tmp_path / "05_train"
    files = prepare(cfg, out)
    ds = json.loads(files["deepspeed"].read_text())
    assert ds["train_batch_size"] == tc.global_batch_size
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * tc.world_size == \
        tc.global_batch_size
    assert ds["zero_optimization"]["stage"] == tc.zero_stage
    assert ds.get("bf16", {}).get("enabled", False) == (tc.precision == "bf16")
    cmd = command(cfg, out)
    assert cmd[0].endswith("deepspeed") and cmd[cmd.index("--num_gpus") + 1] == str(tc.num_gpus)
    assert cmd[cmd.index("--num_nodes") + 1] == str(tc.num_nodes) and tc.num_nodes > 1
    assert cmd[cmd.index("--hostfile") + 1] == str(project_root() / "params" / tc.hostfile)
    assert cmd[-4:] == ["--config", str(out / CONFIG_FILE), "--out", str(out)]
    assert "--module" in cmd and cmd[cmd.index("--module") + 1] == "phi_lib.train"
    # what the launched ranks read is this very config
    assert load(files["config"]).hash() == cfg.hash()
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_phi3_small_adds_multilingual_data_in_both_phases(tmp_path):
    mix = recipe("phi-3-small.yaml", tmp_path).mix
    assert [ph.weights["multilingual"] for ph in mix.phases] == [0.1, 0.1]  # "+10% multilingual"
    # the overall shares are the phases' shares weighted by their token ranges
    spans = [mix.phases[0].until_tokens, mix.total_tokens - mix.phases[0].until_tokens]
    for name, source in mix.sources.items():
        overall = sum(s * ph.weights.get(name, 0.0) for s, ph in zip(spans, mix.phases)) / mix.total_tokens
        assert abs(source.weight - overall) < 5e-4, name


@pytest.mark.parametrize("name", ["phi-3-small.yaml", "phi-3-medium.yaml", "phi-2.yaml"])
def test_plan_is_for_the_recipes_model_and_a_measured_mfu_only_counts_on_its_device(name, tmp_path):
    from phi_lib.model.planning import param_count
    from phi_lib.train.mfu import GPU_PEAK_TFLOPS
    from phi_lib.train.planner import MPT_MFU, projection

    cfg = recipe(name, tmp_path)
    tc, gpu = cfg.train, cfg.train.plan_gpu
    # a CPU run's MFU says nothing about the plan's GPU: the published anchor is used, labelled
    cpu = projection(cfg, 0.22, measured_on="cpu")
    assert "measured" not in set(cpu["mfu_basis"])
    anchor = cpu[cpu["mfu_basis"] == "published anchor"]
    assert set(anchor["mfu"]) == {MPT_MFU[gpu]} and set(anchor["gpus"]) == set(tc.plan_gpus)
    assert "published anchor" in anchor["mfu_source"].iloc[0] and "cpu" in anchor["mfu_source"].iloc[0]
    assert set(projection(cfg, 0.22)["mfu_basis"]) == set(cpu["mfu_basis"])  # device unknown: same
    # the plan is the recipe's own model at its context: GPU-hours = tokens x FLOPs per token
    # / (MFU x peak), FLOPs per token 6 N + 12 L H d T (PaLM appendix B), N its size
    model = PhiConfig.from_model_config(cfg.model)
    flops = (6 * param_count(model)["non_embedding"] + 12 * model.num_hidden_layers
             * model.num_attention_heads * model.head_dim * model.max_position_embeddings)
    hours = tc.plan_tokens * flops / (MPT_MFU[gpu] * GPU_PEAK_TFLOPS[gpu][0] * 1e12) / 3600
    assert set(anchor["model"]) == {cfg.model.preset}
    assert abs(anchor["gpu_hours"].iloc[0] - hours) <= 1
    # measured on the plan's GPU kind: counted, and its GPU-hours scale as 1 / MFU
    same = projection(cfg, MPT_MFU[gpu] / 2, measured_on=gpu)
    measured = same[same["mfu_basis"] == "measured"]
    assert len(measured) == len(tc.plan_gpus)
    ratio = measured["gpu_hours"].iloc[0] / anchor["gpu_hours"].iloc[0]
    assert abs(ratio - 2.0) < 1e-3


def test_smoke_plans_phi_1_5_and_drops_its_cpu_mfu(tmp_path):
    from phi_lib.train.planner import plot_projection, projection

    cfg = load(project_root() / "params" / "smoke.yaml", {"run.output_root": str(tmp_path)})
    table = projection(cfg, 0.22, measured_on="cpu")
    assert set(table["model"]) == {"phi-1.5"} and cfg.train.plan_gpu == "A100"
    assert list(dict.fromkeys(table["mfu_basis"])) == ["published anchor", "paper implied"]
    fig = plot_projection(table, cfg)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any("published anchor" in t and "cpu" in t for t in labels)


@pytest.mark.parametrize("device", ["H100", "cpu"])
def test_config_command_prints_the_plan(device, tmp_path, capsys):
    """`python -m phi_lib config P`: the resolved config (still YAML), then GB per GPU per ZeRO
    stage and GPU-hours at the anchor MFU, plus this run's stage-05 MFU only if it was
    measured on the plan's GPU kind."""
    import yaml

    from phi_lib.__main__ import main
    from phi_lib.io import atomic_write_json
    from phi_lib.model.planning import flops_per_token
    from phi_lib.train.mfu import GPU_PEAK_TFLOPS
    from phi_lib.train.planner import MPT_MFU

    cfg = recipe("phi-3-small.yaml", tmp_path)
    tc, gpu = cfg.train, cfg.train.plan_gpu
    assert gpu == "H100"
    # what stage 05's summary step records: a 30% MFU measured on `device`
    atomic_write_json(cfg.run_dir / "05_train" / ".steps" / "summarize.json",
                      {"metrics": {"mfu": 0.30}, "mfu_device": device})
    assert main(["config", str(project_root() / "params/phi-3-small.yaml"),
                 "--set", f"run.output_root={tmp_path}"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed == {k: v for k, v in cfg.to_dict().items() if k != "params_file"}
    lines = [x.removeprefix("# ").strip() for x in text.splitlines() if x.startswith("# ")]
    model = PhiConfig.from_model_config(cfg.model)
    for zero in range(4):
        gb = memory_per_gpu(model, zero, "bf16", tc.world_size, tc.micro_batch_size,
                            model.max_position_embeddings)["total"]
        row = next(x for x in lines if x.startswith(f"ZeRO-{zero} "))
        assert float(row.split()[1]) == pytest.approx(gb, abs=0.05)
    assert any(x.startswith("planner fit (bf16, 80 GB): ZeRO-2") for x in lines)

    def hours(mfu):  # tokens x FLOPs per token / (MFU x peak)
        fpt = flops_per_token(model, model.max_position_embeddings)
        return tc.plan_tokens * fpt / (mfu * GPU_PEAK_TFLOPS[gpu][0] * 1e12) / 3600

    plan = {x.split("]")[0].split("[")[1]: x for x in lines if "] " in x}
    anchor = plan.pop("published anchor")
    assert abs(int(anchor.split()[0].replace(",", "")) - hours(MPT_MFU[gpu])) <= 1
    if device == gpu:
        assert abs(int(plan.pop("measured").split()[0].replace(",", "")) - hours(0.30)) <= 1
    else:  # a CPU's MFU says nothing about an H100: anchor only, and the label says why
        assert "30.0% measured on cpu is not a H100 figure" in anchor
    assert not plan  # phi-3-small publishes no GPU-hours: no paper-implied row


PARAMS = sorted(p.name for p in (project_root() / "params").glob("*.yaml"))


@pytest.mark.parametrize("name", PARAMS)
def test_launch_dry_run_of_every_params_file(name, tmp_path, capsys):
    """`python -m phi_lib launch P --dry-run`: the DeepSpeed config and the exact command,
    with the hostfile (one written for the params' num_nodes x num_gpus), the batch
    arithmetic and the GPU memory checked; nothing runs. A finetune (phi-1) needs stage 03's
    packed set first, and the dry run says so."""
    from phi_lib.__main__ import main

    sets = {"run.output_root": str(tmp_path)}
    cfg = load(project_root() / "params" / name, sets)
    tc = cfg.train
    if tc.num_nodes > 1:
        hostfile = tmp_path / "hostfile"
        hostfile.write_text("".join(f"node-{i} slots={tc.num_gpus}\n" for i in range(tc.num_nodes)))
        sets["train.hostfile"] = str(hostfile)
    argv = ["launch", str(project_root() / "params" / name), "--dry-run"]
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    rc = main(argv)
    captured = capsys.readouterr()
    failures = [x for x in captured.err.splitlines() if x.startswith("FAILED: ")]
    if tc.finetune.enabled:  # the only failure: the finetune set is not packed yet
        assert rc == 1 and len(failures) == 1 and "finetune set" in failures[0], captured.err
    else:
        assert rc == 0 and not failures, captured.err
    out = cfg.run_dir / "05_train"
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * tc.world_size \
        == ds["train_batch_size"] == tc.global_batch_size
    assert load(out / CONFIG_FILE).hash() == load(project_root() / "params" / name, sets).hash()
    cmd = captured.out.splitlines()[captured.out.splitlines().index("command:") + 1].split()
    assert cmd[-4:] == ["--config", str(out / CONFIG_FILE), "--out", str(out)]
    if tc.launcher != "single":
        assert cmd[cmd.index("--num_gpus") + 1] == str(tc.num_gpus)
        assert f"GB per GPU of 68 usable on an 80 GB {tc.plan_gpu}" in captured.out
    lines = captured.out.splitlines()
    env = dict(x.strip().split("=", 1) for x in lines[lines.index("environment (set over yours):") + 1:]
               if x.startswith("  ") and "=" in x)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(project_root())
    if tc.launcher == "deepspeed" and tc.num_nodes > 1:  # the other nodes get them from the file
        remote = dict(x.split("=", 1) for x in Path(env["DS_ENV_FILE"]).read_text().splitlines())
        assert remote["OMP_NUM_THREADS"] == env["OMP_NUM_THREADS"]
        assert remote["PHI_DATA"] == os.environ["PHI_DATA"]
    else:
        assert "DS_ENV_FILE" not in env
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_launch_dry_run_names_a_hostfile_that_disagrees(tmp_path, capsys):
    from phi_lib.__main__ import main

    cfg = recipe("phi-3-small.yaml", tmp_path)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"node-{i} slots=4\n" for i in range(cfg.train.num_nodes)))
    rc = main(["launch", str(project_root() / "params/phi-3-small.yaml"), "--dry-run",
               "--set", f"run.output_root={tmp_path}", "--set", f"train.hostfile={hostfile}"])
    err = capsys.readouterr().err
    assert rc == 1 and f"train.hostfile {hostfile}: 32 host(s) with slots [4]; the params name " \
        "32 x slots=8" in err
    # and a model that cannot fit the GPU named: ZeRO-0 keeps all Adam states on every GPU
    rc = main(["launch", str(project_root() / "params/phi-3-small.yaml"), "--dry-run",
               "--set", f"run.output_root={tmp_path}", "--set", f"train.hostfile={hostfile}",
               "--set", "train.zero_stage=0"])
    assert rc == 1 and "GB per GPU > 68 GB usable on H100" in capsys.readouterr().err
