"""A small OpenAI-compatible server over any backend (by default the local model).

    python -m phi_lib.backends.server --model smollm2 --port 8000

Serves `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`.
Concurrent requests are batched (up to `max_batch`, waiting at most `batch_wait_s` for a
batch to fill), so clients with many requests in flight get the local backend's batched
throughput. It exists to run the workbook's HTTP path end to end without a GPU server
(tests, perf, a laptop); at scale point `base_urls` at vLLM/TGI instead.

`fail_next(n, status)` makes the next `n` requests fail with `status` (then it recovers):
the way tests exercise a client's retries against a real server. `retry_after` sets the
`Retry-After` header of those answers, `body` replaces their JSON error (a 200 with a body
that is not an OpenAI completion is a malformed reply).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from dataclasses import asdict
from typing import Optional

from phi_lib.backends.base import Backend, Completion
from phi_lib.config import BackendConfig, SamplingConfig


class OpenAIServer:
    def __init__(self, backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                 max_batch: int = 8, batch_wait_s: float = 0.02, api_key: Optional[str] = None):
        self.backend, self.host, self.port = backend, host, port
        self.api_key = api_key
        """If set, requests must carry `Authorization: Bearer <api_key>` (else HTTP 401)."""
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.requests = 0
        """Requests received (failed ones included)."""
        self.batches: list[int] = []
        """Size of each batch sent to the backend."""
        self.max_in_flight = 0
        """Most requests the server held at once (what a client's concurrency limit bounds)."""
        self._in_flight = 0
        self._faults: list[int] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail_next(self, n: int, status: int = 503, *, retry_after: str = "0",
                  body: Optional[str] = None) -> None:
        """The next `n` requests are answered with HTTP `status` (and `Retry-After:
        retry_after`, and `body` as the raw answer if given); later ones are served."""
        with self._lock:
            self._faults.extend([(status, retry_after, body)] * n)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "OpenAIServer":
        """Serve in a background thread; returns once the port is bound."""
        self._thread = threading.Thread(target=self._serve_forever, daemon=True, name="openai-server")
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the OpenAI server did not start within 60 s")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _serve_forever(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", lambda r: self._handle(r, chat=True))
        app.router.add_post("/v1/completions", lambda r: self._handle(r, chat=False))
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port the OS picked for 0
        worker = asyncio.create_task(self._batcher())
        self._ready.set()
        await self._stop_event.wait()
        worker.cancel()
        await runner.cleanup()

    # ------------------------------------------------------------------ handlers
    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [
            {"id": self.backend.model, "object": "model", "owned_by": "phi-workbook"}]})

    async def _handle(self, request, chat: bool):
        from aiohttp import web

        with self._lock:
            self.requests += 1
            fault = self._faults.pop(0) if self._faults else None
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        if fault is not None:
            status, retry_after, raw = fault
            headers = {"Retry-After": retry_after}
            if raw is not None:
                return web.Response(text=raw, status=status, headers=headers,
                                    content_type="application/json")
            return web.json_response({"error": {"message": "injected failure", "code": status}},
                                     status=status, headers=headers)
        try:
            body = await request.json()
            prompt = body["messages"] if chat else body["prompt"]
            params = SamplingConfig(
                max_new_tokens=int(body.get("max_tokens") or 256),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0) or 0),
                stop=[body["stop"]] if isinstance(body.get("stop"), str) else list(body.get("stop") or []))
            params.check()
            n_top = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
            if chat and body.get("logprobs") and not n_top:
                n_top = 1
        except Exception as e:  # noqa: BLE001 - any malformed body is the client's error
            return web.json_response({"error": {"message": f"bad request: {e}"}}, status=400)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            fut = self._loop.create_future()
            await self._queue.put((prompt, params, chat, n_top, body.get("seed"), fut))
            c: Completion = await fut
        finally:
            self._in_flight -= 1
        return web.json_response(_response(c, body.get("model") or self.backend.model, chat))

    async def _batcher(self) -> None:
        """Collect queued requests into batches of the same settings; run them in a thread."""
        while True:
            items = [await self._queue.get()]
            deadline = time.monotonic() + self.batch_wait_s
            while len(items) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            groups: dict[str, list] = {}
            for it in items:
                key = json.dumps([asdict(it[1]), it[2], it[3]], sort_keys=True)
                groups.setdefault(key, []).append(it)
            for group in groups.values():
                params, chat, n_top = group[0][1], group[0][2], group[0][3]
                seeds = [it[4] for it in group]
                self.batches.append(len(group))
                try:
                    outs = await asyncio.to_thread(
                        self.backend.generate, [it[0] for it in group], params, chat=chat,
                        logprobs=n_top, seeds=None if all(s is None for s in seeds) else seeds)
                except Exception as e:  # noqa: BLE001 - reported to each waiting client
                    outs = [Completion(text="", finish_reason="error", error=repr(e))] * len(group)
                for it, c in zip(group, outs):
                    if not it[5].done():
                        it[5].set_result(c)


def _response(c: Completion, model: str, chat: bool) -> dict:
    usage = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
             "total_tokens": c.prompt_tokens + c.completion_tokens}
    choice: dict = {"index": 0, "finish_reason": c.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": c.text}
        if c.logprobs is not None:
            choice["logprobs"] = {"content": [
                {"token": tok, "logprob": lp,
                 "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]}
                for lp, top, tok in zip(c.logprobs, c.top_logprobs or [{}] * len(c.logprobs),
                                        _chosen(c))]}
    else:
        choice["text"] = c.text
        if c.logprobs is not None:
            choice["logprobs"] = {"tokens": _chosen(c), "token_logprobs": c.logprobs,
                                  "top_logprobs": c.top_logprobs}
    return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion" if chat else
            "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage}


def _chosen(c: Completion) -> list[str]:
    """Text of each chosen token (the alternative whose logprob is the chosen one's)."""
    out = []
    for lp, top in zip(c.logprobs or [], c.top_logprobs or [{}] * len(c.logprobs or [])):
        out.append(next((t for t, v in top.items() if v == lp), ""))
    return out


def main(argv: Optional[list[str]] = None) -> None:
    from phi_lib.backends import get_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--api-key-env", default="", help="require the key in this env variable")
    a = ap.parse_args(argv)
    import os

    key = os.environ.get(a.api_key_env) if a.api_key_env else None
    backend = get_backend(BackendConfig(model=a.model, batch_size=a.batch_size, device=a.device,
                                        cache=False))
    server = OpenAIServer(backend, host=a.host, port=a.port, max_batch=a.batch_size,
                          api_key=key).start()
    print(f"serving {a.model} at {server.base_url}", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
