"""The training program every launched process runs:

    python -m phi_lib.train --config 05_train/train_config.yaml --out 05_train
    deepspeed --num_gpus 8 --module phi_lib.train --config ... --out ...
    torchrun --nproc_per_node 8 -m phi_lib.train --config ... --out ...

A failure is written to `<out>/errors/rank{R}.json` (what the launcher reports) and the
process exits non-zero; checkpoints already on disk are never touched by the failure.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phi_lib.train", description=__doc__)
    ap.add_argument("--config", required=True, help="resolved params YAML (written by prepare)")
    ap.add_argument("--out", required=True, help="the stage folder (05_train)")
    ap.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = ap.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    from phi_lib.config import load
    from phi_lib.provenance import file_digest
    from phi_lib.train import checkpoint as ckpt
    from phi_lib.train.errors import describe, write_error

    config_digest = file_digest(args.config)  # launch() records the digest of what it wrote
    cfg = load(args.config)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", 0))
    try:
        if cfg.train.launcher != "single":
            import deepspeed

            deepspeed.init_distributed()
            import torch.distributed as dist

            rank = dist.get_rank()
        _threads(cfg)
        from phi_lib.train.loop import Trainer

        if rank == 0:
            print(f"config {args.config} (digest {config_digest})", flush=True)
        Trainer(cfg, out, config_digest=config_digest).run()
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported, then the process exits non-zero
        if isinstance(exc, KeyboardInterrupt):
            raise
        info = describe(exc, cfg.train.micro_batch_size, ckpt.latest(out / "checkpoints"))
        write_error(out, rank, info)
        print(f"[rank {rank}] TRAINING FAILED ({info['kind']}): {info['message']}",
              file=sys.stderr, flush=True)
        if info["kind"] == "error":
            print(info.get("traceback", ""), file=sys.stderr, flush=True)
        return 1


def _threads(cfg) -> None:
    """On CPU, split the cores between the local processes unless OMP_NUM_THREADS says."""
    import torch

    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


if __name__ == "__main__":
    sys.exit(main())
