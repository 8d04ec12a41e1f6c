"""Command line: `python -m phi_lib {run,sweep,status,config,launch,eval} ...`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Stage packages that add a subcommand expose `register(subparsers)`; each sets `func`.
PLUGIN_COMMANDS = ("phi_lib.evaluate.cli",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phi_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the stage notebooks of a params file")
    p.add_argument("params", help="params YAML, e.g. params/smoke.yaml")
    p.add_argument("--stages", default=None, help="comma-separated stage numbers, e.g. 01,03")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. train.max_steps=20 (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print stage lines only, not each cell's output (executed notebooks keep it)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run the variants of a sweep file and compare them")
    p.add_argument("sweep", help="sweep YAML, e.g. params/sweeps/mixture.yaml")
    p.add_argument("--force", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="stage lines only (as for `run`)")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: list each (variant, seed) run, its steps and tokens, and "
                        "which stages it would share with an earlier run")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("status", help="which stages of a run are current, and why not")
    p.add_argument("params")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("config", help="validate a params file, print the resolved config and its "
                       "plan (GB per GPU per ZeRO stage, GPU-hours per MFU source)")
    p.add_argument("params")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("launch", help="stage 05's launch, dry: write its DeepSpeed config and "
                       "print its command; check hostfile, batch and GPU memory")
    p.add_argument("params")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dry-run", action="store_true",
                   help="required: nothing is started (`run P --stages 05` trains)")
    p.set_defaults(func=_cmd_launch)

    for mod in PLUGIN_COMMANDS:
        try:
            importlib.import_module(mod).register(sub)
        except ImportError:
            pass

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from phi_lib.config import ConfigError
    from phi_lib.run import StageFailed

    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _cmd_run(args) -> int:
    from phi_lib.config import load, parse_set
    from phi_lib.run import run

    cfg = load(args.params, parse_set(args.sets))  # fails before any work on a bad file
    stages = args.stages.split(",") if args.stages else None
    res = run(cfg, stages=stages, force=args.force, stream_outputs=not args.quiet)
    return 1 if any(s.status == "failed" for s in res.statuses) else 0


def _cmd_sweep(args) -> int:
    from phi_lib.sweep import plan, sweep

    if args.dry_run:
        for r in plan(args.sweep):
            shared = {n: s["shared_with"] for n, s in r["stages"].items() if s["shared_with"]}
            own = [n for n, s in r["stages"].items() if not s["shared_with"]]
            print(f"{r['run']}: variant {r['variant']}, seed {r['seed']}, "
                  f"{r['train_steps']} steps, {r['tokens']:,} tokens; runs {' '.join(own) or '-'}"
                  + "".join(f"; {n} shared with {w}" for n, w in shared.items()))
        return 0
    table = sweep(args.sweep, force=args.force, stream_outputs=not args.quiet)
    print(f"comparison: {table} (+ results.md, results.png)")
    return 0


def _cmd_status(args) -> int:
    from phi_lib.config import load, parse_set
    from phi_lib.stages import STAGES

    cfg = load(args.params, parse_set(args.sets))
    print(f"run {cfg.run.name!r} in {cfg.run_dir}")
    for number, stage in STAGES.items():
        if number not in cfg.run.stages or not stage.built:
            continue
        reasons = stage.stale_reasons(cfg)
        state = "current" if not reasons else "not run" if reasons == ["not run"] else \
            "stale: " + ", ".join(reasons)
        print(f"  {stage.dirname:<16} {state}")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from phi_lib.config import load, parse_set

    cfg = load(args.params, parse_set(args.sets))
    d = cfg.to_dict()
    d.pop("params_file", None)
    print(yaml.safe_dump(d, sort_keys=False), end="")
    print(f"# config hash: {cfg.hash()}")
    for line in plan_lines(cfg):  # YAML comments: the output still loads as the config
        print(f"# {line}".rstrip())
    return 0


def plan_lines(cfg) -> list[str]:
    """The planner's view of a config (phi_lib.train.planner, phi_lib.model.planning): GB per
    GPU per ZeRO stage, the fit for the GPUs it names, and GPU-hours of `train.plan_tokens` at
    each MFU source; a stage-05 MFU counts only if measured on `train.plan_gpu`."""
    from phi_lib.io import read_json
    from phi_lib.model.planning import fit_training, param_count
    from phi_lib.stage_base import STEPS_DIR
    from phi_lib.stages import STAGES
    from phi_lib.train.planner import memory_table, plan_model, plan_seq_len, projection

    tc, model = cfg.train, plan_model(cfg)
    seq_len = plan_seq_len(cfg, model)
    mem = memory_table(cfg, n_gpus=tc.world_size)["total"].unstack("precision")
    lines = [f"plan: {model.name} ({param_count(model)['total']:,} parameters), seq {seq_len}, "
             f"{tc.world_size} GPU(s), micro batch {tc.micro_batch_size}",
             "GB per GPU (weights, gradients, Adam, activations):  " + "  ".join(mem.columns)]
    lines += [f"  ZeRO-{zero}  " + "  ".join(f"{gb:8.1f}" for gb in row) for zero, row in mem.iterrows()]
    try:
        fit = fit_training(model, n_gpus=tc.world_size, seq_len=seq_len,
                           global_batch_size=tc.global_batch_size, precision=tc.precision)
        lines.append(f"planner fit ({tc.precision}, 80 GB): ZeRO-{fit['zero_stage']}, micro batch "
                     f"{fit['micro_batch_size']}, activation checkpointing "
                     f"{'on' if fit['activation_checkpointing'] else 'off'}, {fit['memory_gb']} GB "
                     f"per GPU; configured: ZeRO-{tc.zero_stage}, micro batch {tc.micro_batch_size}")
    except ValueError as e:
        lines.append(f"planner fit: {e}")
    try:  # this run's stage-05 MFU, if it has trained
        stats = read_json(STAGES["05"].dir(cfg) / STEPS_DIR / "summarize.json")
    except (OSError, ValueError):
        stats = {}
    table = projection(cfg, (stats.get("metrics") or {}).get("mfu"), stats.get("mfu_device"))
    lines.append(f"{tc.plan_gpu}-hours for {tc.plan_tokens / 1e9:,.0f}B tokens:")
    for source, rows in table.groupby("mfu_source", sort=False):
        days = ", ".join(f"{n} GPUs {d:,.1f} days" for n, d in zip(rows["gpus"], rows["wall_days"]))
        lines.append(f"  {rows['gpu_hours'].iloc[0]:>12,}  [{rows['mfu_basis'].iloc[0]}] {source}; {days}")
    return lines


GPU_GB = {"A100": 80.0, "H100": 80.0}
"""Memory of the `train.plan_gpu` kinds (the 80 GB parts the recipes are planned for)."""
USABLE = 0.85
"""Share of it the model may take (the rest: buffers, the CUDA context; as fit_training)."""


def _cmd_launch(args) -> int:
    from phi_lib.config import load, parse_set

    if not args.dry_run:
        print("error: launch only runs --dry-run; `python -m phi_lib run P --stages 05` trains",
              file=sys.stderr)
        return 2
    lines, failures = launch_dry_run(load(args.params, parse_set(args.sets)))
    print("\n".join(lines))
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def launch_dry_run(cfg) -> tuple[list[str], list[str]]:
    """(report lines, failed checks) of stage 05's launch without starting it: writes the
    resolved `train_config.yaml` and `ds_config.json` into the stage folder (as `launch` does,
    which rewrites them), gives the exact command(s), and checks the hostfile against
    num_nodes x num_gpus, the global batch against micro x accumulation x world, the packed
    finetune set when one is trained, and the model's memory per GPU against `train.plan_gpu`."""
    from phi_lib.model import PhiConfig
    from phi_lib.model.planning import memory_per_gpu
    from phi_lib.stages import STAGES
    from phi_lib.train.deepspeed_config import write_ds_config
    from phi_lib.train.launcher import _hostfile, commands, launch_env, read_hostfile, write_config
    from phi_lib.train.phases import finetune_data
    from phi_lib.train.select import check_selectable

    tc, out = cfg.train, STAGES["05"].dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    config_file = write_config(cfg, out)[0]
    ds = write_ds_config(tc, out / "ds_config.json")
    env = launch_env(cfg, out, write=True)
    lines = [f"wrote {config_file} and {out / 'ds_config.json'}"
             + (f" and {env['DS_ENV_FILE']}" if "DS_ENV_FILE" in env else ""), "command:"]
    lines += [f"  {c}" for c in commands(cfg, out)]
    lines += ["environment (set over yours):"] + [f"  {k}={v}" for k, v in env.items()]
    failures = []
    world = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
    lines.append(f"world: {tc.launcher}, {tc.num_nodes} node(s) x {tc.num_gpus} GPU(s) = "
                 f"{tc.world_size} process(es); global batch {ds['train_batch_size']} = micro "
                 f"{ds['train_micro_batch_size_per_gpu']} x accumulation "
                 f"{ds['gradient_accumulation_steps']} x world {tc.world_size}")
    if world * tc.world_size != ds["train_batch_size"] or ds["train_batch_size"] != tc.global_batch_size:
        failures.append(f"train.global_batch_size {tc.global_batch_size} != micro x accumulation x "
                        f"world = {world * tc.world_size}")
    if tc.num_nodes > 1:
        path = _hostfile(cfg)
        try:
            hosts = read_hostfile(path)
            slots = sorted({n for _, n in hosts})
            lines.append(f"hostfile {path}: {len(hosts)} host(s), slots {slots}")
            if len(hosts) != tc.num_nodes or slots != [tc.num_gpus]:
                failures.append(f"train.hostfile {path}: {len(hosts)} host(s) with slots {slots}; "
                                f"the params name {tc.num_nodes} x slots={tc.num_gpus}")
        except Exception as e:  # noqa: BLE001 - LaunchError (missing, empty, malformed)
            failures.append(str(e))
    try:
        if tc.finetune.enabled:
            lines.append(f"finetune set: {finetune_data(cfg)}")
        check_selectable(cfg)
    except (FileNotFoundError, ValueError) as e:
        failures.append(str(e))
    if tc.launcher != "single":  # GPU processes: the configured model must fit the GPU named
        model = PhiConfig.from_model_config(cfg.model)
        gb = memory_per_gpu(model, tc.zero_stage, tc.precision, tc.world_size,
                            tc.micro_batch_size, cfg.mix.seq_len,
                            activation_checkpointing=tc.activation_checkpointing)["total"]
        budget = USABLE * GPU_GB[tc.plan_gpu]
        lines.append(f"memory: {model.name} at ZeRO-{tc.zero_stage}, {tc.precision}, micro batch "
                     f"{tc.micro_batch_size}, seq {cfg.mix.seq_len}: {gb:.1f} GB per GPU of "
                     f"{budget:.0f} usable on an {GPU_GB[tc.plan_gpu]:.0f} GB {tc.plan_gpu}")
        if gb > budget:
            failures.append(f"the model needs {gb:.1f} GB per GPU > {budget:.0f} GB usable on "
                            f"{tc.plan_gpu}: raise train.zero_stage, lower micro_batch_size or "
                            "enable activation_checkpointing (`python -m phi_lib config` shows the fit)")
    return lines, failures


if __name__ == "__main__":
    sys.exit(main())
