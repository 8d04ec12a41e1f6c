"""The one generation interface every backend implements.

Synthesis (stage 01), annotation (stage 02) and the toxicity judge (stage 07) only talk to
this: ``backend.generate(prompts, params) -> list[Completion]``. Prompts are chat messages
(a string is one user turn) for instruct models; raw completion (no chat template) is asked
for with ``chat=False``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
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
                 chat: bool = True, logprobs: int = 0,
                 progress: bool = False) -> list[Completion]:
        """One completion per prompt, in order. `logprobs=N` asks for N top alternatives."""

    def close(self) -> None:
        """Release resources (HTTP sessions, GPU memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
