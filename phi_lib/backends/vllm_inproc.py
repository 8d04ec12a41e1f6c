"""vLLM in-process (GPU): the fastest local path when `vllm` is installed.

vLLM schedules all prompts itself (continuous batching), so the whole list goes in one call.
Model names are resolved as everywhere in the workbook (`smollm2`, `.gguf`, checkpoint, dir).
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Sequence

from phi_lib.backends.base import Backend, Completion, Prompt, as_messages, as_text, check_seeds
from phi_lib.config import BackendConfig, SamplingConfig


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, cfg: BackendConfig, *, run_dir=None):
        if not available():
            raise ImportError("backend.kind=vllm needs the `vllm` package (pip install vllm, "
                              "CUDA); use kind=transformers, or kind=openai against a vLLM server")
        self.cfg, self.model, self._run_dir = cfg, cfg.model, run_dir
        self._llm = None

    def load(self):
        if self._llm is None:
            from vllm import LLM

            from phi_lib.hf_models import resolve_model

            dtype = "auto" if self.cfg.dtype == "auto" else self.cfg.dtype
            self._llm = LLM(model=resolve_model(self.cfg.model, self._run_dir), dtype=dtype)
        return self._llm

    def generate(self, prompts: Sequence[Prompt], params: SamplingConfig, *, chat: bool = True,
                 logprobs: int = 0, progress: bool = False,
                 seeds: Optional[Sequence[int]] = None) -> list[Completion]:
        from vllm import SamplingParams

        seeds = check_seeds(prompts, seeds)
        llm = self.load()
        sps = [SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                              top_p=params.top_p, top_k=params.top_k or -1,
                              stop=list(params.stop) or None, seed=s,
                              logprobs=logprobs or None) for s in seeds]
        if chat:
            outs = llm.chat([as_messages(p) for p in prompts], sps, use_tqdm=progress)
        else:
            outs = llm.generate([as_text(p) for p in prompts], sps, use_tqdm=progress)
        result = []
        for o in outs:
            g = o.outputs[0]
            c = Completion(text=g.text, prompt_tokens=len(o.prompt_token_ids or []),
                           completion_tokens=len(g.token_ids),
                           finish_reason="stop" if g.finish_reason == "stop" else "length")
            if logprobs and g.logprobs:
                c.logprobs = [step[t].logprob for step, t in zip(g.logprobs, g.token_ids)]
                c.top_logprobs = [{lp.decoded_token: lp.logprob for lp in step.values()}
                                  for step in g.logprobs]
            result.append(c)
        return result

    def close(self) -> None:
        self._llm = None
