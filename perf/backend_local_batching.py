"""Local backend throughput: batched generation vs one prompt at a time.

Peer: plain `transformers` `model.generate` called once per prompt (what a loop over prompts
does). Ours: `TransformersBackend.generate` over the whole list (length-sorted batches, left
padding). Same model (SmolLM2-135M-Instruct GGUF), same greedy settings, same prompts.

    python perf/backend_local_batching.py [--n 8] [--tokens 32] [--batch 8]
"""
import argparse
import time

import torch

from phi_lib.backends import get_backend
from phi_lib.config import BackendConfig, SamplingConfig

PROMPTS = ["Explain photosynthesis to a child.", "Write a Python function that reverses a list.",
           "What is a prime number?", "Give three tips for saving money.",
           "Describe the water cycle.", "What does a compiler do?",
           "Why do we have seasons?", "How do vaccines work?"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(a.n)]
    params = SamplingConfig(max_new_tokens=a.tokens, temperature=0.0)
    backend = get_backend(BackendConfig(batch_size=a.batch, device=a.device, cache=False))
    lm, tok = backend.load()
    backend.generate(prompts[:1], SamplingConfig(max_new_tokens=2, temperature=0.0))  # warm up

    t0 = time.perf_counter()
    n_peer = 0
    for p in prompts:  # peer: transformers generate, one prompt at a time
        ids = tok(backend.render(p, chat=True), add_special_tokens=False, return_tensors="pt").to(lm.device)
        with torch.inference_mode():
            o = lm.generate(**ids, max_new_tokens=a.tokens, do_sample=False,
                            pad_token_id=tok.pad_token_id)
        n_peer += o.shape[1] - ids["input_ids"].shape[1]
    t_peer = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = backend.generate(prompts, params)
    t_ours = time.perf_counter() - t0
    n_ours = sum(c.completion_tokens for c in out)

    peer, ours = n_peer / t_peer, n_ours / t_ours
    print(f"device {lm.device} | {a.n} prompts x <= {a.tokens} new tokens | threads {torch.get_num_threads()}")
    print(f"transformers generate, one prompt at a time: {n_peer} tokens in {t_peer:.1f}s = {peer:.1f} tok/s")
    print(f"TransformersBackend batched (batch {a.batch}):   {n_ours} tokens in {t_ours:.1f}s = {ours:.1f} tok/s")
    print(f"ratio batched / one-at-a-time: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
