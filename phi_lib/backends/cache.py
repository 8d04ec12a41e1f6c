"""On-disk request cache: (model, prompt, sampling params, seed) hash -> completion.

A rerun of a stage (after a crash, or with a downstream change) then costs nothing for the
requests already answered. The key includes the backend's identity (settings and the content
digest of a local model), so a changed model behind the same name is never answered from
the cache. SQLite gives atomic, concurrent-safe writes from several
processes; failed completions (`finish_reason == "error"`) are never cached.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path
from typing import Optional, Sequence

from phi_lib.backends.base import Backend, Completion, Prompt, check_seeds, request_key
from phi_lib.config import SamplingConfig


class RequestCache:
    """A key -> Completion store in `<folder>/requests.sqlite`."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "requests.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite caps the number of host parameters
                chunk = list(keys[i:i + 500])
                rows = self._db.execute(
                    f"SELECT key, value FROM completions WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall()
                for key, value in rows:
                    out[key] = Completion(**json.loads(value))
        return out

    def put_many(self, items: dict[str, Completion]) -> None:
        rows = [(k, json.dumps(dataclasses.asdict(c), ensure_ascii=False)) for k, c in items.items()
                if c.finish_reason != "error"]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO completions VALUES (?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(Backend):
    """Wraps a backend: answers from the cache, sends only the misses to the backend."""

    def __init__(self, inner: Backend, folder: Path, identity: str = ""):
        self.inner = inner
        self.cache = RequestCache(folder)
        self.name, self.model = inner.name, inner.model
        self.identity = identity
        """`phi_lib.backends.backend_identity` digest: part of every request key."""
        self.hits = self.misses = 0

    def generate(self, prompts: Sequence[Prompt], params: SamplingConfig, *, chat: bool = True,
                 logprobs: int = 0, progress: bool = False,
                 seeds: Optional[Sequence[int]] = None) -> list[Completion]:
        seeds = check_seeds(prompts, seeds)
        keys = [request_key(f"{self.name}:{self.model}:{self.identity}", p, params, chat=chat, logprobs=logprobs,
                            seed=s) for p, s in zip(prompts, seeds)]
        found = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(prompts) - len(todo)
        self.misses += len(todo)
        fresh: list[Completion] = []
        if todo:
            fresh = self.inner.generate(
                [prompts[i] for i in todo], params, chat=chat, logprobs=logprobs,
                progress=progress,
                seeds=None if all(s is None for s in seeds) else [seeds[i] for i in todo])
            self.cache.put_many({keys[i]: c for i, c in zip(todo, fresh)})
        out: list[Completion] = []
        fresh_by_index = dict(zip(todo, fresh))
        for i, key in enumerate(keys):
            if i in fresh_by_index:
                out.append(fresh_by_index[i])
            else:
                out.append(dataclasses.replace(found[key], cached=True))
        return out

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
