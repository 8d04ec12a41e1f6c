"""Command line: `python -m phi_lib {run,sweep,status,config,eval} ...`."""
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
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("status", help="which stages of a run are current, and why not")
    p.add_argument("params")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("config", help="validate a params file and print the resolved config")
    p.add_argument("params")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_config)

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
    from phi_lib.sweep import sweep

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
