"""Batched generation tokens/s: our `generate` vs transformers `generate`, same weights.

Greedy decoding of a batch of left-padded prompts of different lengths, a fixed number of
new tokens (no EOS stop, so both do the same work); both outputs are compared token for
token. Runs alternate and the median is reported with the ratio.

    python perf/model_generate.py                       # CPU, phi-1.5 geometry at 4 layers
    python perf/model_generate.py --device cuda --dtype bfloat16 --layers 0 --hidden 0 --batch 32
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.generate import left_pad
from phi_lib.model.parity import to_transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="phi-1.5")
    ap.add_argument("--layers", type=int, default=4, help="override the layer count (0 = preset's)")
    ap.add_argument("--hidden", type=int, default=512, help="override the width (0 = preset's)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64, help="longest prompt; others are shorter")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    over = {"eos_token_id": None}
    if args.layers:
        over["num_hidden_layers"] = args.layers
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_attention_heads=args.hidden // 64)
    cfg = PhiConfig.from_preset(args.preset, **over)
    torch.manual_seed(0)
    ours = PhiForCausalLM(cfg).to(args.device, getattr(torch, args.dtype)).eval()
    theirs = to_transformers(ours, "sdpa")
    g = torch.Generator().manual_seed(0)
    lengths = torch.linspace(args.prompt // 2, args.prompt, args.batch).long().tolist()
    prompts = [torch.randint(0, 50000, (n,), generator=g).tolist() for n in lengths]
    ids, mask = left_pad(prompts, pad_id=0, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run_ours():
        return ours.generate(ids, mask, max_new_tokens=args.new, temperature=0.0, eos_token_id=None)

    def run_theirs():
        return theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new,
                               min_new_tokens=args.new, do_sample=False, pad_token_id=0)

    a, b = run_ours(), run_theirs()  # warm up, and the same tokens?
    same = torch.equal(a, b)
    times = {"ours": [], "transformers": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("transformers", run_theirs)):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                fn()
            sync()
            n = args.batch * args.new  # wall, and process-CPU time (steadier on a shared machine)
            times[name].append((n / (time.perf_counter() - t0), n / (time.process_time() - c0)))
    print(f"config: {cfg.name} layers={cfg.num_hidden_layers} hidden={cfg.hidden_size} batch={args.batch} "
          f"prompts {lengths[0]}..{lengths[-1]} tokens (left-padded), {args.new} new, greedy, "
          f"{args.dtype} on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"identical tokens: {same}")
    ref = statistics.median(v[0] for v in times["transformers"])
    ref_cpu = statistics.median(v[1] for v in times["transformers"])
    for name, vals in times.items():
        tps, cpu = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
        print(f"{name:14s} {tps:9.1f} new tokens/s  ratio vs transformers {tps / ref:5.2f}x"
              f"   | per CPU-second {cpu:8.1f}  ratio {cpu / ref_cpu:5.2f}x")


if __name__ == "__main__":
    main()
