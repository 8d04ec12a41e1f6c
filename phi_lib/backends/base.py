"""The one generation interface every backend implements.

Synthesis (stage 01), annotation (stage 02) and the toxicity judge (stage 07) only talk to
this: ``backend.generate(prompts, params) -> list[Completion]``. Prompts are chat messages
(a string is one user turn) for instruct models; raw completion (no chat template) is asked
for with ``chat=False``. ``seeds`` (one per prompt) make sampled requests reproducible and
distinct: two records with the same prompt but different seeds are two requests, also for
the request cache.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

from phi_lib.config import SamplingConfig

Prompt = Union[str, list[dict]]
"""A user message, or a list of chat messages `{"role": ..., "content": ...}`."""


@dataclass
class Completion:
    text: str
    """The generated text, cut before the first stop sequence."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    """`stop` (EOS or a stop sequence), `length` (max_new_tokens) or `error`."""
    logprobs: Optional[list[float]] = None
    """Log-probability of each generated token, where the backend has them."""
    top_logprobs: Optional[list[dict[str, float]]] = None
    """Per generated token, the most likely alternatives (token text -> logprob), if asked."""
    cached: bool = False
    """True if served from the on-disk request cache."""
    error: Optional[str] = None
    """Why the request failed after all retries (`finish_reason == "error"`)."""
    meta: dict = field(default_factory=dict)


class Backend(ABC):
    """A text generator. Implementations: transformers (local), openai (HTTP), vllm."""

    name: str = "base"
    model: str = ""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingConfig, *,
                 chat: bool = True, logprobs: int = 0, progress: bool = False,
                 seeds: Optional[Sequence[int]] = None) -> list[Completion]:
        """One completion per prompt, in order.

        `logprobs=N` (N >= 1) asks for the log-probability of each generated token and its N
        most likely alternatives; `seeds` gives one sampling seed per prompt.
        """

    def close(self) -> None:
        """Release resources (HTTP sessions, GPU memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages (a string is one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                               for m in prompt):
        raise TypeError(f"a prompt is a string or a list of {{'role', 'content'}} messages, "
                        f"got {prompt!r:.200}")
    return prompt


def as_text(prompt: Prompt) -> str:
    """A prompt as raw text for `chat=False` (messages are joined by blank lines)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in as_messages(prompt))


def request_key(model: str, prompt: Prompt, params: SamplingConfig, *, chat: bool,
                logprobs: int, seed: Optional[int]) -> str:
    """Stable hash of everything that decides a completion (not where it is served from)."""
    blob = json.dumps({"model": model, "prompt": prompt, "params": asdict(params), "chat": chat,
                       "logprobs": logprobs, "seed": seed}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_seeds(prompts: Sequence[Prompt], seeds: Optional[Sequence[int]]) -> list[Optional[int]]:
    if seeds is None:
        return [None] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: got {len(seeds)} seeds for {len(prompts)} prompts")
    return list(seeds)
