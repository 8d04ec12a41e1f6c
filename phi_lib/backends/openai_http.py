"""Any OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp server, hosted APIs) as a backend.

Requests go out asynchronously (httpx) with at most `max_concurrency` in flight, spread over
`base_urls` (the least busy endpoint first), under an optional global rate limit. A 429, a
5xx, a timeout, a dropped connection or a malformed 200 (not JSON, no `choices`) is retried
with exponential backoff and jitter, or after the server's `Retry-After` (seconds or an HTTP
date), both capped at `max_backoff_s`, so a server asking for an hour does not stall a run;
after `max_retries` the completion comes back with `finish_reason="error"` and the reason, so
one bad request does not sink a whole batch. Such errors are not results: callers retry
them on their next run (the request cache never stores them).
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any, Optional, Sequence

from phi_lib.backends.base import Backend, Completion, Prompt, as_messages, as_text, check_seeds
from phi_lib.config import BackendConfig, SamplingConfig

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HTTPError(RuntimeError):
    """A non-retryable answer (4xx other than 408/409/425/429) or retries exhausted."""


class RateLimiter:
    """At most `per_s` request starts per second over all endpoints (0 = unlimited)."""

    def __init__(self, per_s: float):
        self.interval = 1.0 / per_s if per_s > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        await asyncio.sleep(start - now)


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, cfg: BackendConfig, *, backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        """`backoff_s`: the first retry's delay (doubled each time, with jitter);
        `max_backoff_s`: the longest wait between attempts, `Retry-After` included."""
        if not cfg.base_urls:
            raise ValueError("backend.base_urls: the openai backend needs at least one endpoint")
        self.cfg, self.model = cfg, cfg.model
        self.urls = [u.rstrip("/") for u in cfg.base_urls]
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        key = os.environ.get(cfg.api_key_env, "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.stats = {"requests": 0, "retries": 0, "errors": 0}
        """Attempts sent, retried attempts, and requests that failed for good."""

    # ------------------------------------------------------------------ sync entry point
    def generate(self, prompts: Sequence[Prompt], params: SamplingConfig, *, chat: bool = True,
                 logprobs: int = 0, progress: bool = False,
                 seeds: Optional[Sequence[int]] = None) -> list[Completion]:
        seeds = check_seeds(prompts, seeds)
        coro = self.agenerate(prompts, params, chat=chat, logprobs=logprobs, progress=progress,
                              seeds=seeds)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from a running loop (a Jupyter cell): run ours in a thread of its own.
        box: dict[str, Any] = {}

        def target():
            try:
                box["out"] = asyncio.run(coro)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["err"] = e

        th = threading.Thread(target=target, daemon=True)
        th.start()
        th.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def agenerate(self, prompts: Sequence[Prompt], params: SamplingConfig, *,
                        chat: bool = True, logprobs: int = 0, progress: bool = False,
                        seeds: Optional[Sequence[Optional[int]]] = None) -> list[Completion]:
        import httpx

        seeds = check_seeds(prompts, seeds)
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        limiter = RateLimiter(self.cfg.requests_per_s)
        in_flight = [0] * len(self.urls)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=f"generate ({len(self.urls)} endpoint(s))",
                       unit="req")
        t0, n_tokens = time.perf_counter(), 0
        limits = httpx.Limits(max_connections=self.cfg.max_concurrency,
                              max_keepalive_connections=self.cfg.max_concurrency)
        async with httpx.AsyncClient(timeout=self.cfg.timeout_s, limits=limits,
                                     headers=self.headers) as client:
            async def one(prompt: Prompt, seed: Optional[int]) -> Completion:
                nonlocal n_tokens
                async with sem:
                    c = await self._request(client, limiter, in_flight, prompt, params, chat,
                                            logprobs, seed)
                n_tokens += c.completion_tokens
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.1f}",
                                    errors=self.stats["errors"])
                return c

            out = await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds)))
        if bar is not None:
            bar.close()
        return list(out)

    # ------------------------------------------------------------------ one request
    def payload(self, prompt: Prompt, params: SamplingConfig, chat: bool, logprobs: int,
                seed: Optional[int]) -> tuple[str, dict]:
        """(path, JSON body) of the request for one prompt."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.top_k:
            body["top_k"] = params.top_k  # vLLM/TGI/llama.cpp extension
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        if chat:
            body["messages"] = as_messages(prompt)
            if logprobs:
                body.update(logprobs=True, top_logprobs=logprobs)
            return "/chat/completions", body
        body["prompt"] = as_text(prompt)
        if logprobs:
            body["logprobs"] = logprobs
        return "/completions", body

    async def _request(self, client, limiter: RateLimiter, in_flight: list[int], prompt: Prompt,
                       params: SamplingConfig, chat: bool, logprobs: int,
                       seed: Optional[int]) -> Completion:
        import httpx

        path, body = self.payload(prompt, params, chat, logprobs, seed)
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            e = min(range(len(self.urls)), key=lambda i: in_flight[i])  # least busy endpoint
            await limiter.wait()
            in_flight[e] += 1
            self.stats["requests"] += 1
            retry_after = None
            try:
                r = await client.post(self.urls[e] + path, json=body)
                if r.status_code == 200:
                    try:
                        return parse_response(r.json(), chat, endpoint=self.urls[e])
                    except (ValueError, HTTPError) as exc:  # a proxy's error page, a cut body
                        last = f"malformed HTTP 200 from {self.urls[e]}: {exc}"[:400]
                else:
                    last = f"HTTP {r.status_code} from {self.urls[e]}: {r.text[:300]}"
                    if r.status_code not in RETRY_STATUS:
                        break
                    retry_after = _retry_after(r.headers.get("retry-after"))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__} from {self.urls[e]}: {exc}"
            finally:
                in_flight[e] -= 1
            if attempt < self.cfg.max_retries:
                delay = self.backoff_s * 2 ** attempt * (0.5 + random.random())
                await asyncio.sleep(min(self.max_backoff_s,
                                        retry_after if retry_after is not None else delay))
        self.stats["errors"] += 1
        return Completion(text="", finish_reason="error", error=last)


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds a `Retry-After` header asks to wait (delay-seconds or an HTTP date), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_response(data: dict, chat: bool, endpoint: str = "") -> Completion:
    """A Completion from an OpenAI `chat.completion` or `text_completion` JSON answer."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError) as e:
        raise HTTPError(f"{endpoint}: not an OpenAI completion response ({e!r}): {str(data)[:300]}")
    usage = data.get("usage") or {}
    c = Completion(text=text or "", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0),
                   finish_reason=choice.get("finish_reason") or "stop",
                   meta={"endpoint": endpoint})
    lp = choice.get("logprobs")
    if lp:
        if chat and lp.get("content") is not None:
            c.logprobs = [t["logprob"] for t in lp["content"]]
            c.top_logprobs = [{a["token"]: a["logprob"] for a in t.get("top_logprobs") or []}
                              for t in lp["content"]]
        elif not chat and lp.get("token_logprobs") is not None:
            c.logprobs = list(lp["token_logprobs"])
            c.top_logprobs = [dict(d or {}) for d in lp.get("top_logprobs") or []]
    return c
