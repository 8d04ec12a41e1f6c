"""Training step (forward + backward) tokens/s: our PhiForCausalLM vs transformers.PhiForCausalLM.

Same config, same weights, same batch, in one process; runs alternate (ours, theirs, ours, ...)
so background load hits both alike; the median of each is reported with the ratio.

    python perf/model_train_step.py                                  # CPU, phi-1.5 geometry, 4 layers
    python perf/model_train_step.py --preset phi-1.5 --layers 0 --device cuda --dtype bf16 \
        --batch 8 --seq 2048 --peak-tflops 989      # GPU: full phi-1.5, prints MFU
    python perf/model_train_step.py --device cuda --dtype bf16 --attn flash_attention_2,sdpa
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.parity import to_transformers
from phi_lib.model.planning import flops_per_token


def step(model, ids, hf: bool) -> None:
    logits = model(ids).logits if hf else model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model, ids, hf: bool, sync) -> tuple[float, float]:
    """(tokens per wall second, tokens per process-CPU second); the second is steadier when
    other jobs share the machine."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    step(model, ids, hf)
    sync()
    return ids.numel() / (time.perf_counter() - t0), ids.numel() / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="phi-1.5")
    ap.add_argument("--layers", type=int, default=4, help="override the layer count (0 = preset's)")
    ap.add_argument("--hidden", type=int, default=512, help="override the width (0 = preset's)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attn", default="sdpa", help="our kernels to time, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak (dense, this dtype) for MFU")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    over = {}
    if args.layers:
        over["num_hidden_layers"] = args.layers
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_attention_heads=args.hidden // 64)
    cfg = PhiConfig.from_preset(args.preset, **over)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ours = PhiForCausalLM(cfg).to(args.device, dtype).train()
    theirs = to_transformers(ours, "sdpa").train()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    kernels = args.attn.split(",")
    results: dict[str, list[tuple[float, float]]] = {f"ours[{k}]": [] for k in kernels}
    results["transformers[sdpa]"] = []
    for model, hf in ((ours, False), (theirs, True)):  # warm up
        step(model, ids, hf)
    for _ in range(args.rounds):
        for k in kernels:
            ours.config.attn_implementation = k
            results[f"ours[{k}]"].append(timed(ours, ids, False, sync))
        results["transformers[sdpa]"].append(timed(theirs, ids, True, sync))
    n = sum(p.numel() for p in ours.parameters())
    print(f"config: {cfg.name} layers={cfg.num_hidden_layers} hidden={cfg.hidden_size} "
          f"params={n / 1e6:.1f}M batch={args.batch}x{args.seq} {args.dtype} on {args.device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    ref = statistics.median(v[0] for v in results["transformers[sdpa]"])
    ref_cpu = statistics.median(v[1] for v in results["transformers[sdpa]"])
    fpt = flops_per_token(cfg, args.seq)
    for name, vals in results.items():
        tps, cpu = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
        line = (f"{name:22s} {tps:10.1f} tokens/s  ratio vs transformers {tps / ref:5.2f}x"
                f"   | per CPU-second {cpu:9.1f}  ratio {cpu / ref_cpu:5.2f}x")
        if args.peak_tflops:
            line += f"  MFU {tps * fpt / (args.peak_tflops * 1e12):6.1%}"
        print(line)


if __name__ == "__main__":
    main()
