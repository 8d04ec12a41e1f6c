"""Tokenize + pack throughput: stage 03 (phi_lib.data) vs a `datasets.map` baseline.

Both do the same work on the same real corpora: read the JSONL, tokenize with the codegen
tokenizer over `num_proc` processes, append EOS to every document, cut the stream into
`seq_len` windows and write them to disk. The baseline is the Hugging Face `run_clm.py`
recipe: `load_dataset("json")` -> `map(tokenize, batched, num_proc)` -> `map(group_texts)`
-> `save_to_disk`. Prints tokens/s of each and the ratio.

    PHI_DATA=../shared python perf/mix_tokenize_pack.py [--num-proc 2] [--seq-len 2048]
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPORA = ["corpora/textbook/dolma-synthetic-topics", "corpora/web/c4-en"]


def make_corpus(folder: Path, copies: int) -> Path:
    """The real corpora (C4 + dolma synthetic passages) as one `text`-only JSONL, `copies`
    times over (each copy tagged so no two documents are identical): ~1M tokens a copy."""
    import json

    from phi_lib.corpora import iter_documents
    from phi_lib.paths import data_path

    texts = [d["text"] for c in CORPORA for d in iter_documents(data_path(c)) if d.get("text")]
    path = folder / "corpus" / "docs.jsonl"
    path.parent.mkdir(parents=True)
    with open(path, "w", encoding="utf-8") as f:
        for k in range(copies):
            for t in texts:
                f.write(json.dumps({"text": f"[{k}] {t}"}) + "\n")
    return path


def ours(tmp: Path, corpus: Path, num_proc: int, seq_len: int) -> tuple[float, int]:
    from phi_lib.config import load
    from phi_lib.data import MixBuilder

    sources = {"corpus": {"path": str(corpus), "weight": 1.0}}
    cfg = load({"run": {"name": "perf", "output_root": str(tmp)}}, {
        "mix.sources": sources, "mix.seq_len": seq_len, "mix.val_fraction": 0.0,
        "mix.num_proc": num_proc, "mix.total_tokens": 10**12})
    out = cfg.run_dir / "03_mix"
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    b = MixBuilder(cfg, out, progress=False)
    b.tokenize()
    b.mc.total_tokens = int(b.sources_table()["train_tokens"].sum())  # one epoch
    b.plan()
    b.pack()
    return time.perf_counter() - t0, b.mix_info["splits"]["train"]["n_tokens"]


def baseline(tmp: Path, corpus: Path, num_proc: int, seq_len: int) -> tuple[float, int]:
    import datasets
    from itertools import chain

    from phi_lib.data.tokenizer import load_tokenizer

    files = [str(corpus)]
    tok = load_tokenizer("codegen-350M-mono")
    eos = tok.eos_id
    t0 = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=files, split="train",
                                cache_dir=str(tmp / "hf_cache"))
    raw = raw.select_columns(["text"])

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tok.encode_batch(batch["text"])]}

    def group_texts(batch):
        flat = list(chain.from_iterable(batch["input_ids"]))
        n = len(flat) // seq_len * seq_len
        return {"input_ids": [flat[i:i + seq_len] for i in range(0, n, seq_len)]}

    toks = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
    packed = toks.map(group_texts, batched=True, batch_size=1000, num_proc=num_proc)
    packed.save_to_disk(str(tmp / "hf_packed"))
    return time.perf_counter() - t0, len(packed) * seq_len


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--copies", type=int, default=4, help="corpus copies (~1M tokens each)")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="mixperf-data-"))
    corpus = make_corpus(data, args.copies)
    results = {}
    for name, fn in (("phi_lib.data", ours), ("datasets.map", baseline)):
        best = None
        for _ in range(args.repeats):
            tmp = Path(tempfile.mkdtemp(prefix="mixperf-"))
            try:
                secs, tokens = fn(tmp, corpus, args.num_proc, args.seq_len)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            best = secs if best is None else min(best, secs)
        results[name] = (best, tokens)
        print(f"{name:14s} {tokens:>10,} tokens packed in {best:6.2f} s = {tokens / best:>12,.0f} tokens/s")
    (a, ta), (b, tb) = results["phi_lib.data"], results["datasets.map"]
    print(f"ratio phi_lib.data / datasets.map (tokens/s): {(ta / a) / (tb / b):.2f}x "
          f"(num_proc={args.num_proc}, seq_len={args.seq_len}, {os.cpu_count()} CPUs)")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
