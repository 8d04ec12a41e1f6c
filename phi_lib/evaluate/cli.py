"""`python -m phi_lib eval --model M --tasks arc_easy,hellaswag --limit N --out DIR`."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model on benchmark tasks (lm-eval conventions)",
        description="Writes DIR/results.json (results[task][metric] with stderr) and "
                    "DIR/samples/<task>.jsonl (per-item prompts, scores, predictions).")
    p.add_argument("--model", required=True,
                   help="smollm2, a .gguf file, an HF dir or hub name, a checkpoint dir, or "
                        "`checkpoint` with --run-dir")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task names or groups, e.g. arc_easy,hellaswag "
                        "or early_signal")
    p.add_argument("--limit", type=int, default=None, help="first N items of each task")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--run-dir", default=None, help="run folder for --model checkpoint")
    p.add_argument("--params", default=None,
                   help="params YAML whose `evaluate` section gives the settings")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. evaluate.batch_size=4 (repeatable)")
    p.add_argument("--force", action="store_true", help="recompute tasks already done")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from phi_lib.config import load, parse_set
    from phi_lib.evaluate.harness import HEADLINE, evaluate_model

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    overrides = {"evaluate.tasks": tasks, **parse_set(args.sets)}
    cfg = load(args.params, overrides)  # no --params: the paper's defaults; strict either way
    ev, data_dir = cfg.evaluate, cfg.run.data_dir
    res = evaluate_model(args.model, ev.tasks, args.out, cfg=ev, limit=args.limit,
                         run_dir=args.run_dir, data_dir=data_dir, force=args.force,
                         tokenizer=cfg.model.tokenizer)
    for task, m in res["results"].items():
        key = HEADLINE[task] if HEADLINE[task] in m else next(iter(m))
        extra = f", acc_norm {m['acc_norm']:.4f}" if "acc_norm" in m else ""
        print(f"{task:14s} {key} {m[key]:.4f} ± {m.get(key + '_stderr', float('nan')):.4f}"
              f"{extra}  (n={m['n']})")
    for task, why in res["skipped"].items():
        print(f"{task:14s} skipped: {why}")
    print(f"results: {args.out}/results.json")
    return 0 if res["results"] else 1
