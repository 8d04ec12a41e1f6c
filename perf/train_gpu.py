"""GPU training throughput of phi-1.5 (1.3B) at sequence 2048: tokens/s and MFU of our
stage-05 loop, bf16 and fp16, flash-attention 2 vs SDPA, against the MPT-1.3B anchor
(llm-foundry: 41.8% MFU on H100, 59.9% on A100, bf16, seq 2048). Run on a GPU machine:

    PHI_DATA=/path/to/shared python perf/train_gpu.py                 # one GPU, both precisions
    python perf/train_gpu.py --micro 8 --steps 12 --attn sdpa

MFU uses the datasheet dense peak of the GPU (H100 989, A100 312 TFLOP/s) and
`phi_lib.model.planning.flops_per_token` (6N + attention, no recompute). The first logged
step (compilation, allocator warm-up) is excluded.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from phi_lib.config import load
from train_vs_trainer import build_mix  # noqa: E402 - a sibling script

ROOT = Path(__file__).resolve().parent.parent
MPT = {"H100": 0.418, "A100": 0.599}


def run(tmp: Path, mix: Path, precision: str, attn: str, args) -> list[dict]:
    from phi_lib.train.loop import Trainer
    from phi_lib.train.metrics import read_metrics

    name = f"{precision}-{attn}"
    (tmp / name).mkdir(parents=True, exist_ok=True)
    (tmp / name / "03_mix").symlink_to(mix)
    cfg = load(ROOT / "params" / "phi-1.5.yaml", {
        "run.output_root": str(tmp), "run.name": name, "model.attn_implementation": attn,
        "train.launcher": "single", "train.precision": precision, "train.max_steps": args.steps,
        "train.micro_batch_size": args.micro, "train.global_batch_size": args.micro * args.accum,
        "train.num_nodes": 1, "train.hostfile": None, "train.save_every": 10**6,
        "train.eval_every": 10**6, "train.log_every": 1, "train.tensorboard": False})
    out = cfg.run_dir / "05_train"
    Trainer(cfg, out, log=lambda *a, **k: None).run()
    return read_metrics(out / "metrics.jsonl")[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", help="a 03_mix dir at seq 2048 (default: built from corpora/web/c4-en)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--precision", default="bf16,fp16")
    ap.add_argument("--attn", default="flash_attention_2,sdpa")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    anchor = next((v for k, v in MPT.items() if k in gpu.upper()), None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = Path(args.mix) if args.mix else build_mix(tmp / "data", 2048)
        print(f"{gpu} | phi-1.5 1.3B | seq 2048 | micro {args.micro} x accum {args.accum}")
        for precision in args.precision.split(","):
            for attn in args.attn.split(","):
                if attn == "flash_attention_2":
                    try:
                        import flash_attn  # noqa: F401
                    except ImportError:
                        print(f"{precision:5s} {attn:18s} skipped: flash-attn not installed")
                        continue
                try:
                    recs = run(tmp, mix, precision, attn, args)
                except torch.OutOfMemoryError:
                    print(f"{precision:5s} {attn:18s} OOM at micro {args.micro}: lower --micro")
                    torch.cuda.empty_cache()
                    continue
                tps = statistics.median(r["tokens_per_s"] for r in recs)
                mfu = statistics.median(r["mfu"] for r in recs)
                vs = f" | vs MPT-1.3B {mfu / anchor:.2f}x" if anchor else ""
                print(f"{precision:5s} {attn:18s} {tps:9.0f} tokens/s | MFU {mfu:.1%}{vs} | "
                      f"peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
