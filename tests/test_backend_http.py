"""The OpenAI-compatible HTTP backend against a real aiohttp server on loopback.

These are plumbing tests (concurrency, retries, failures, endpoints, keys, cache), so the
server wraps a deterministic echo backend; tests/test_backend_local.py puts the real model
behind the same server.
"""
import threading
import time

import pytest

from phi_lib.backends import get_backend
from phi_lib.backends.base import Backend, Completion, as_text
from phi_lib.backends.cache import CachedBackend
from phi_lib.backends.server import OpenAIServer
from phi_lib.config import BackendConfig, SamplingConfig

pytestmark = pytest.mark.unit

PARAMS = SamplingConfig(max_new_tokens=8, temperature=0.0)


class EchoBackend(Backend):
    """Answers `echo:<prompt>:<seed>` after `delay_s`; counts calls (a test double)."""

    name, model = "echo", "echo-1"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.calls, self.prompts_seen = delay_s, 0, 0
        self._lock = threading.Lock()

    def generate(self, prompts, params, *, chat=True, logprobs=0, progress=False, seeds=None):
        with self._lock:
            self.calls += 1
            self.prompts_seen += len(prompts)
        time.sleep(self.delay_s)
        seeds = seeds or [None] * len(prompts)
        out = []
        for p, s in zip(prompts, seeds):
            c = Completion(text=f"echo:{as_text(p)}:{s}", prompt_tokens=3, completion_tokens=2,
                           finish_reason="stop")
            if logprobs:
                c.logprobs = [-0.5, -1.0]
                c.top_logprobs = [{"a": -0.5, "b": -2.0}, {"c": -1.0}]
            out.append(c)
        return out


@pytest.fixture
def server():
    with OpenAIServer(EchoBackend(delay_s=0.05), max_batch=4, batch_wait_s=0.01) as s:
        yield s


def client(*urls, **kw) -> Backend:
    kw.setdefault("cache", False)
    return get_backend(BackendConfig(kind="openai", model="echo-1", base_urls=list(urls), **kw))


def test_round_trip_chat_and_completion_with_logprobs(server):
    b = client(server.base_url)
    [c] = b.generate(["hello"], PARAMS, seeds=[7], logprobs=2)
    assert c.text == "echo:hello:7" and c.finish_reason == "stop"
    assert (c.prompt_tokens, c.completion_tokens) == (3, 2)
    assert c.logprobs == [-0.5, -1.0] and c.top_logprobs[0] == {"a": -0.5, "b": -2.0}
    [c] = b.generate([[{"role": "user", "content": "x"}]], PARAMS, chat=False, logprobs=1)
    assert c.text == "echo:x:None" and c.logprobs == [-0.5, -1.0]


def test_order_kept_and_concurrency_limit_respected(server):
    b = client(server.base_url, max_concurrency=3)
    prompts = [f"p{i}" for i in range(12)]
    out = b.generate(prompts, PARAMS, progress=True)
    assert [c.text for c in out] == [f"echo:p{i}:None" for i in range(12)]
    assert server.max_in_flight == 3  # never more than the limit, and the limit is used
    assert max(server.batches) > 1  # concurrent requests were batched by the server


def test_server_that_fails_then_recovers_is_retried(server):
    server.fail_next(3, 503)
    b = client(server.base_url, max_retries=4)
    b.backoff_s = 0.01
    out = b.generate(["a", "b"], PARAMS)
    assert [c.text for c in out] == ["echo:a:None", "echo:b:None"]
    assert b.stats["retries"] == 3 and b.stats["errors"] == 0
    assert server.requests == 5


def test_429_is_retried_too(server):
    server.fail_next(1, 429)
    b = client(server.base_url, max_retries=1)
    b.backoff_s = 0.01
    assert b.generate(["a"], PARAMS)[0].text == "echo:a:None"


def test_persistent_failure_becomes_error_completion_not_exception(server):
    server.fail_next(100, 500)
    b = client(server.base_url, max_retries=2)
    b.backoff_s = 0.01
    [c] = b.generate(["a"], PARAMS)
    assert c.finish_reason == "error" and "HTTP 500" in c.error
    assert b.stats == {"requests": 3, "retries": 2, "errors": 1}


def test_client_errors_are_not_retried(server):
    server.fail_next(1, 404)
    b = client(server.base_url, max_retries=5)
    [c] = b.generate(["a"], PARAMS)
    assert c.finish_reason == "error" and "HTTP 404" in c.error
    assert b.stats["requests"] == 1


def test_timeout_is_retried_then_reported():
    with OpenAIServer(EchoBackend(delay_s=1.0)) as slow:
        b = client(slow.base_url, timeout_s=0.2, max_retries=1)
        b.backoff_s = 0.01
        [c] = b.generate(["a"], PARAMS)
    assert c.finish_reason == "error" and "Timeout" in c.error
    assert b.stats["requests"] == 2


def test_endpoint_down_then_up():
    """Connection refused is retried: a server that comes up later is then used."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on `port` now
    srv = OpenAIServer(EchoBackend(), port=port)
    b = client(f"http://127.0.0.1:{port}/v1", max_retries=8)
    b.backoff_s = 0.2
    threading.Timer(0.3, srv.start).start()
    try:
        [c] = b.generate(["a"], PARAMS)
    finally:
        time.sleep(0.1)
        srv.stop()
    assert c.text == "echo:a:None" and b.stats["retries"] >= 1


def test_several_endpoints_share_the_load():
    with OpenAIServer(EchoBackend(delay_s=0.05)) as s1, OpenAIServer(EchoBackend(delay_s=0.05)) as s2:
        b = client(s1.base_url, s2.base_url, max_concurrency=4)
        out = b.generate([f"p{i}" for i in range(16)], PARAMS)
        assert all(c.finish_reason == "stop" for c in out)
        assert s1.requests > 0 and s2.requests > 0 and s1.requests + s2.requests == 16
        assert {c.meta["endpoint"] for c in out} == {s1.base_url, s2.base_url}


def test_api_key_from_environment(monkeypatch):
    with OpenAIServer(EchoBackend(), api_key="sekret") as s:
        monkeypatch.delenv("PHI_TEST_KEY", raising=False)
        [c] = client(s.base_url, api_key_env="PHI_TEST_KEY").generate(["a"], PARAMS)
        assert c.finish_reason == "error" and "401" in c.error
        monkeypatch.setenv("PHI_TEST_KEY", "sekret")
        [c] = client(s.base_url, api_key_env="PHI_TEST_KEY").generate(["a"], PARAMS)
        assert c.text == "echo:a:None"


def test_rate_limit_spaces_requests(server):
    b = client(server.base_url, max_concurrency=8, requests_per_s=20)
    t0 = time.perf_counter()
    b.generate([f"p{i}" for i in range(6)], PARAMS)
    assert time.perf_counter() - t0 >= 5 / 20 * 0.9  # 6 starts need >= 5 intervals


def test_generate_works_inside_a_running_event_loop(server):
    """Jupyter cells run inside an event loop; generate() must still work there."""
    import asyncio

    b = client(server.base_url)

    async def cell():
        return b.generate(["a"], PARAMS)

    assert asyncio.run(cell())[0].text == "echo:a:None"


def test_request_cache_serves_reruns_and_never_caches_errors(tmp_path, server):
    inner = EchoBackend()
    b = CachedBackend(inner, tmp_path)
    first = b.generate(["a", "b", "a"], PARAMS, seeds=[1, 1, 2])
    assert [c.text for c in first] == ["echo:a:1", "echo:b:1", "echo:a:2"]
    again = b.generate(["a", "b", "a", "c"], PARAMS, seeds=[1, 1, 2, 1])
    assert [c.cached for c in again] == [True, True, True, False]
    assert [c.text for c in again[:3]] == [c.text for c in first]
    assert inner.prompts_seen == 4
    # another sampling config is another request
    b.generate(["a"], SamplingConfig(max_new_tokens=9, temperature=0.0), seeds=[1])
    assert inner.prompts_seen == 5
    # errors from an HTTP backend are retried on the next run, not replayed from the cache
    server.fail_next(2, 500)
    http = CachedBackend(client(server.base_url, max_retries=1), tmp_path / "h")
    http.inner.backoff_s = 0.01
    assert http.generate(["z"], PARAMS)[0].finish_reason == "error"
    assert http.generate(["z"], PARAMS)[0].text == "echo:z:None"


def test_get_backend_config_errors():
    from phi_lib.config import ConfigError

    with pytest.raises(ConfigError, match="base_urls"):
        get_backend(BackendConfig(kind="openai", base_urls=[]))
    with pytest.raises(ConfigError, match="kind"):
        get_backend(BackendConfig(kind="tgi"))


def test_vllm_backend_skips_cleanly_when_not_installed():
    from phi_lib.backends import vllm_inproc

    if vllm_inproc.available():
        pytest.skip("vllm installed: covered by the gpu test")
    with pytest.raises(ImportError, match="vllm"):
        get_backend(BackendConfig(kind="vllm", cache=False))


@pytest.mark.parametrize("body", ["this is not JSON", '{"object": "chat.completion"}',
                                  '{"choices": []}'])
def test_malformed_200_is_retried_then_fails_that_request_only(server, body):
    """A 200 whose body is not an OpenAI completion (bad JSON, no choices) is retried like a
    5xx; when it persists only that request comes back as an error: the batch survives."""
    server.fail_next(2, 200, body=body)  # the first request's two attempts
    b = client(server.base_url, max_retries=1, max_concurrency=1)
    b.backoff_s = 0.01
    out = b.generate(["a", "b", "c"], PARAMS)
    assert out[0].finish_reason == "error" and "malformed" in out[0].error
    assert [c.text for c in out[1:]] == ["echo:b:None", "echo:c:None"]
    assert b.stats == {"requests": 4, "retries": 1, "errors": 1}
    server.fail_next(1, 200, body=body)  # once: the retry gets a real answer
    [c] = b.generate(["d"], PARAMS)
    assert c.text == "echo:d:None" and b.stats["retries"] == 2


def test_retry_after_is_honoured_up_to_a_cap(server):
    """A server asking for `Retry-After: 3600` is waited on for at most `max_backoff_s`."""
    server.fail_next(1, 503, retry_after="3600")
    b = client(server.base_url, max_retries=1)
    b.max_backoff_s = 0.4
    t0 = time.perf_counter()
    [c] = b.generate(["a"], PARAMS)
    waited = time.perf_counter() - t0
    assert c.text == "echo:a:None" and b.stats["retries"] == 1
    assert 0.4 <= waited < 3.0  # honoured (waited the cap), but not an hour


def test_retry_after_http_date_is_understood():
    from email.utils import formatdate

    from phi_lib.backends.openai_http import _retry_after

    assert _retry_after("7") == 7.0 and _retry_after("junk") is None and _retry_after(None) is None
    later = _retry_after(formatdate(time.time() + 120, usegmt=True))
    assert 100 < later <= 121
    assert _retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_request_cache_is_keyed_by_the_model_identity(tmp_path):
    """A changed model behind the same name (other weights in the folder) is never answered
    from the cache; operational settings (batch size, device) share it."""
    from phi_lib.backends import backend_identity

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-1")
    cfg = BackendConfig(model=str(model))
    ident = backend_identity(cfg)
    assert ident["model_identity"] != f"name:{model}"
    assert backend_identity(BackendConfig(model=str(model), batch_size=1, device="cpu")) == ident
    assert backend_identity(BackendConfig(model=str(model), dtype="float32")) != ident
    inner = EchoBackend()
    CachedBackend(inner, tmp_path / "c", identity="a").generate(["x"], PARAMS)
    assert CachedBackend(inner, tmp_path / "c", identity="a").generate(["x"], PARAMS)[0].cached
    assert not CachedBackend(inner, tmp_path / "c", identity="b").generate(["x"], PARAMS)[0].cached
    wired = get_backend(BackendConfig(model=str(model), cache=True), cache_dir=tmp_path / "c")
    (model / "model.safetensors").write_bytes(b"weights-2, other size")
    assert backend_identity(cfg) != ident
    rewired = get_backend(BackendConfig(model=str(model), cache=True), cache_dir=tmp_path / "c")
    assert wired.identity and rewired.identity != wired.identity  # what get_backend keys by
    assert backend_identity(BackendConfig(kind="openai", model="m", base_urls=["http://h/v1"])
                            )["model_identity"] == "name:m"
