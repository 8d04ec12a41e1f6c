"""HTTP backend throughput: 1 request in flight vs N, against a loopback OpenAI server.

The server (`phi_lib.backends.server`) wraps the local SmolLM2 backend and batches the
requests it holds, so client concurrency turns into server-side batching, as with vLLM or
TGI. Peer: the same client at concurrency 1 (a sequential loop of requests).

    python perf/backend_http_concurrency.py [--n 16] [--tokens 32] [--concurrency 8]
"""
import argparse
import time

from phi_lib.backends import get_backend
from phi_lib.backends.server import OpenAIServer
from phi_lib.config import BackendConfig, SamplingConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    local = get_backend(BackendConfig(batch_size=a.concurrency, device=a.device, cache=False))
    local.load()
    prompts = [f"Write one sentence about the number {i}." for i in range(a.n)]
    params = SamplingConfig(max_new_tokens=a.tokens, temperature=0.0)
    with OpenAIServer(local, max_batch=a.concurrency, batch_wait_s=0.05) as srv:
        results = {}
        for c in (1, a.concurrency):
            client = get_backend(BackendConfig(kind="openai", model="smollm2",
                                               base_urls=[srv.base_url], max_concurrency=c,
                                               cache=False, timeout_s=600))
            client.generate(prompts[:1], SamplingConfig(max_new_tokens=2, temperature=0.0))
            t0 = time.perf_counter()
            out = client.generate(prompts, params)
            dt = time.perf_counter() - t0
            assert all(o.finish_reason != "error" for o in out), [o.error for o in out]
            tokens = sum(o.completion_tokens for o in out)
            results[c] = tokens / dt
            print(f"concurrency {c:>2}: {tokens} tokens in {dt:.1f}s = {results[c]:.1f} tok/s")
    print(f"ratio concurrency {a.concurrency} / 1: {results[a.concurrency] / results[1]:.2f}x "
          f"(server batches: up to {a.concurrency})")


if __name__ == "__main__":
    main()
