"""Stage 02 throughput: embedding + classifier scoring of the web sample, batched (ours) vs a
naive per-document loop (embed one document, predict one), in the same run; ratio printed,
plus the projected cost of scoring 1B documents.

    python perf/filter_embed_score.py [--docs 256] [--batch 64] [--max-tokens 256] [--device cuda]

On a GPU (`--device cuda`) the projection is per GPU instead of per CPU core.

The random-forest head is fitted on proxy labels (length buckets): throughput does not depend
on what the labels mean.
"""
import argparse
import os
import time

import numpy as np

os.environ.setdefault("PHI_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from phi_lib.corpora import iter_documents  # noqa: E402
from phi_lib.filter.classifier import make_head  # noqa: E402
from phi_lib.embed import get_embedder  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--naive-docs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    docs = [d["text"] for d, _ in zip(iter_documents(["corpora/web/c4-en", "corpora/web/dolma-ccnet-head"]),
                                       range(a.docs))]
    emb = get_embedder("minilm", batch_size=a.batch, max_tokens=a.max_tokens, device=a.device)
    head = make_head("random_forest", 0, 300)
    X0 = emb.embed(docs[:64])
    head.fit(X0, np.minimum([len(t.split()) // 100 for t in docs[:64]], 5))
    head.set_params(n_jobs=1)  # per-document predict with a process pool would be unfair

    t = time.perf_counter()
    for start in range(0, len(docs), a.batch):  # ours: batched embed + batched predict
        head.predict(emb.embed(docs[start:start + a.batch]))
    ours = len(docs) / (time.perf_counter() - t)

    t = time.perf_counter()
    for text in docs[:a.naive_docs]:  # naive: one document at a time
        head.predict(emb.embed([text]))
    naive = a.naive_docs / (time.perf_counter() - t)

    import torch

    gpu = a.device.startswith("cuda")
    units = 1 if gpu else os.cpu_count()
    unit = torch.cuda.get_device_name() if gpu else "CPU core"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"device {a.device}, load average {load:.1f}")
    print(f"batched (ours): {ours:.1f} docs/s | naive per-document: {naive:.1f} docs/s | "
          f"ratio {ours / naive:.2f}x  (MiniLM, {a.max_tokens} tokens, RF 300 trees)")
    per_unit = ours / units
    for n in ((8, 64) if gpu else (64, 1024)):
        hours = 1e9 / (per_unit * n) / 3600
        print(f"projected: 1B documents on {n} x {unit} at this rate: {hours:,.1f} h "
              f"({1e9 / per_unit / 3600:,.0f} {'GPU' if gpu else 'core'}-hours)")


if __name__ == "__main__":
    main()
