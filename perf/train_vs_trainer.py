"""Training throughput: our stage-05 loop vs `transformers.Trainer`, same model, same data.

Both train the same phi config from the same initial weights on the same packed windows
(a 03_mix dir; by default one is built from the data folder's C4 sample) with the same
optimizer settings, micro-batch and accumulation, fp32 on CPU. Ours: `phi_lib.train.Trainer`
(our PhiForCausalLM, PlainEngine). Theirs: `transformers.Trainer` on
`transformers.PhiForCausalLM` holding our initial weights, the windows given as a
`datasets.Dataset` (`phi_lib.data.to_hf_dataset`). Tokens/s is the median over optimizer
steps after the first (warm-up); the ratio is ours / theirs. The two runs alternate
(ours, theirs, ours, theirs) so background load hits both alike.

    python perf/train_vs_trainer.py                 # CPU, phi-tiny, seq 128
    python perf/train_vs_trainer.py --steps 20 --micro 8 --accum 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from phi_lib.config import load

ROOT = Path(__file__).resolve().parent.parent


def build_mix(folder: Path, seq_len: int) -> Path:
    import datasets

    from phi_lib.data import MixBuilder
    from phi_lib.io import read_jsonl
    from phi_lib.paths import data_path

    src = data_path("corpora/web/c4-en")
    if src is None:
        raise SystemExit("set PHI_DATA to the data folder (needs corpora/web/c4-en)")
    texts = [r["text"] for f in sorted(src.glob("*.json.gz")) for r in read_jsonl(f)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder / "docs"))
    cfg = load({"run": {"name": "mix", "output_root": str(folder)}},
               {"mix.sources": {"c4": {"hf_dataset": str(folder / "docs")}}, "mix.total_tokens": 400_000,
                "mix.seq_len": seq_len, "mix.val_fraction": 0.01, "mix.num_proc": 1})
    out = cfg.run_dir / "03_mix"
    out.mkdir(parents=True, exist_ok=True)
    b = MixBuilder(cfg, out, progress=False)
    b.tokenize()
    b.plan()
    b.pack()
    return out


def config(tmp: Path, name: str, mix: Path, args):
    run = tmp / name
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "03_mix").exists():
        (run / "03_mix").symlink_to(mix)
    return load(ROOT / "params" / "smoke.yaml", {
        "run.output_root": str(tmp), "run.name": name, "model.preset": args.preset,
        "train.launcher": "single", "train.precision": "fp32", "train.max_steps": args.steps,
        "train.global_batch_size": args.micro * args.accum, "train.micro_batch_size": args.micro,
        "train.save_every": 10**6, "train.eval_every": 10**6, "train.log_every": 1,
        "train.tensorboard": False, "train.warmup_steps": 2, "train.peak_tflops": 1.0})


def ours(tmp: Path, mix: Path, args, rnd: int) -> list[float]:
    from phi_lib.train.loop import Trainer
    from phi_lib.train.metrics import read_metrics

    cfg = config(tmp, f"ours{rnd}", mix, args)
    out = cfg.run_dir / "05_train"
    Trainer(cfg, out, log=lambda *a, **k: None).run()
    recs = read_metrics(out / "metrics.jsonl")
    return [r["tokens_per_s"] for r in recs[1:]]


def theirs(tmp: Path, mix: Path, args, rnd: int) -> list[float]:
    import transformers

    from phi_lib.data import to_hf_dataset
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.parity import to_transformers

    cfg = config(tmp, f"theirs{rnd}", mix, args)
    torch.manual_seed(cfg.run.seed)  # the same init as our Trainer
    model = to_transformers(PhiForCausalLM(PhiConfig.from_model_config(cfg.model)), "sdpa").train()
    ds = to_hf_dataset(mix, "train")
    seq = ds[0]["input_ids"].__len__()

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        return {"input_ids": ids, "labels": ids}

    tc = cfg.train
    targs = transformers.TrainingArguments(
        output_dir=str(tmp / f"theirs{rnd}" / "hf"), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.accum, max_steps=args.steps, learning_rate=tc.lr,
        lr_scheduler_type="linear", warmup_steps=tc.warmup_steps, adam_beta1=tc.betas[0],
        adam_beta2=tc.betas[1], adam_epsilon=tc.eps, weight_decay=tc.weight_decay,
        max_grad_norm=tc.grad_clip, logging_steps=10**6, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=cfg.run.seed)

    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    transformers.Trainer(model=model, args=targs, train_dataset=ds, data_collator=collate,
                         callbacks=[Timer()]).train()
    return [args.micro * args.accum * seq / t for t in times[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="phi-tiny")
    ap.add_argument("--mix", help="a 03_mix dir (default: build one from corpora/web/c4-en)")
    ap.add_argument("--seq", type=int, default=128, help="window length when building the mix")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = Path(args.mix) if args.mix else build_mix(tmp / "data", args.seq)
        a, b = [], []
        for rnd in range(args.rounds):
            a += ours(tmp, mix, args, rnd)
            b += theirs(tmp, mix, args, rnd)
        ta, tb = statistics.median(a), statistics.median(b)
        print(f"device cpu ({torch.get_num_threads()} threads) | {args.preset} | micro {args.micro} x "
              f"accum {args.accum} | {args.steps} steps x {args.rounds} rounds")
        print(f"ours (phi_lib.train)       {ta:10.0f} tokens/s")
        print(f"transformers.Trainer       {tb:10.0f} tokens/s")
        print(f"ratio ours / Trainer       {ta / tb:10.2f}")


if __name__ == "__main__":
    main()
