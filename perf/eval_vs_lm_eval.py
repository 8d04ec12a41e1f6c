"""Items/s of our harness vs lm-evaluation-harness on the same model and items.

    python perf/eval_vs_lm_eval.py --limit 20 --tasks arc_easy,hellaswag,mmlu

Both score the same documents (lm-eval through its shipped task YAMLs over our loaders'
output, see `phi_lib.evaluate.lm_eval_tasks`) with the same model object and batch size;
the script checks the per-item predictions are identical and prints items/s and the ratio of
wall times, and the ratio of the process's CPU times (`--threads 1` makes that one stable on a
shared machine, where wall time measures the other jobs' load as much as ours).

The "flop bound" column is the most any exact scorer can gain over lm-eval on these
requests, in model FLOPs: lm-eval runs every distinct input (context + continuation[:-1],
its logits cache merges identical ones) through every layer and the output layer at every
position; an exact scorer must still run every distinct prefix of those inputs (a token
trie, since a causal model's state at a position depends on the whole prefix) through the
layers, and the output layer where a continuation token is predicted. Attention's share
(~3% here) is left out.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def flop_bound(tok, items, n_layer_params: int, n_head_params: int) -> tuple[float, float]:
    """(lm-eval's FLOPs, an exact scorer's minimum FLOPs), per token 2 x parameters."""
    from phi_lib.scoring import encode_pair

    inputs, trie, nodes, scored = set(), {}, 0, 0
    for it in items:
        for c, x in zip(it.contexts, it.continuations):
            ctx, cont = encode_pair(tok, c, x)
            seq = ctx + cont[:-1]
            inputs.add(tuple(seq))
            node = trie
            for pos, t in enumerate(seq):
                if t not in node:
                    node[t] = {}
                    nodes += 1
                node = node[t]
                if pos >= len(ctx) - 1 and not node.get("scored"):
                    node["scored"] = True  # position predicts a continuation token
                    scored += 1
    ref = sum(len(s) for s in inputs) * (n_layer_params + n_head_params)
    return 2.0 * ref, 2.0 * (nodes * n_layer_params + scored * n_head_params)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="arc_easy,hellaswag,mmlu")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--mmlu-subject", default="high_school_geography")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from phi_lib.config import EvaluateConfig
    from phi_lib.evaluate import run_task
    from phi_lib.evaluate.data import load_task
    from phi_lib.evaluate.multiple_choice import build_items
    from phi_lib.evaluate.lm_eval_tasks import write_lm_eval_tasks
    from phi_lib.hf_models import load_causal_lm

    model, tok = load_causal_lm(args.model, device=args.device)
    tasks = args.tasks.split(",")
    cfg = EvaluateConfig(batch_size=args.batch_size, mmlu_shots=2)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
    print(f"model {args.model} on {next(model.parameters()).device}, limit {args.limit}, "
          f"batch {args.batch_size}")
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for n, p in model.named_parameters()
               if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
    print(f"{'task':12s} {'items':>5s} {'lm-eval it/s':>13s} {'ours it/s':>10s} {'ratio':>6s} "
          f"{'cpu ratio':>9s} {'flop bound':>11s} same-preds")
    tot_ref = tot_ours = n_tot = cpu_ref = cpu_ours = bound_ours = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            names = write_lm_eval_tasks(tmp, [task], args.limit, mmlu_subjects=[args.mmlu_subject],
                                        prefix="perf_")
            docs = load_task(task, args.limit)
            if task == "mmlu":
                docs = [d for d in docs if d["subject"] == args.mmlu_subject]
            run_task(model, tok, task, docs[:2], cfg, progress=False)  # warm-up (both share it)
            t0, c0 = time.perf_counter(), time.process_time()
            ref = simple_evaluate(model=lm, tasks=list(names),
                                  task_manager=TaskManager(include_path=tmp), log_samples=True,
                                  bootstrap_iters=0, verbosity="ERROR")
            t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            _, ours = run_task(model, tok, task, docs, cfg, progress=False)
            t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
            ref_samples = sorted(ref["samples"][list(names)[0]], key=lambda s: s["doc_id"])
            same = all(o["pred"] == int(np.argmax([float(x[0]) for x in r["filtered_resps"]]))
                       for o, r in zip(ours, ref_samples)) and len(ours) == len(ref_samples)
            n = len(docs)
            f_ref, f_min = flop_bound(tok, build_items(task, docs, cfg.mmlu_shots), body, head)
            print(f"{task:12s} {n:5d} {n / t_ref:13.2f} {n / t_ours:10.2f} "
                  f"{t_ref / t_ours:5.2f}x {c_ref / c_ours:8.2f}x {f_ref / f_min:10.2f}x {same}")
            bound_ours += c_ref * f_min / f_ref  # the CPU time lm-eval's would shrink to
            tot_ref += t_ref
            tot_ours += t_ours
            cpu_ref += c_ref
            cpu_ours += c_ours
            n_tot += n
    print(f"{'total':12s} {int(n_tot):5d} {n_tot / tot_ref:13.2f} {n_tot / tot_ours:10.2f} "
          f"{tot_ref / tot_ours:5.2f}x {cpu_ref / cpu_ours:8.2f}x {cpu_ref / bound_ours:10.2f}x"
          f"  (ours vs lm-eval "
          f"{__import__('lm_eval').__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
