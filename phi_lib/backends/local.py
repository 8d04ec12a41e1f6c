"""Local generation with `transformers`: any model the workbook can name (default: the
SmolLM2-135M-Instruct GGUF), batched, with the chat template, left padding, stop sequences
and log-probabilities of the generated tokens.

Prompts are sorted by length before batching so a batch pads little; completions come back
in the caller's order.
"""
from __future__ import annotations

import time
import zlib
from typing import Optional, Sequence

from phi_lib.backends.base import Backend, Completion, Prompt, as_messages, as_text, check_seeds
from phi_lib.config import BackendConfig, SamplingConfig


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, cfg: BackendConfig, *, run_dir=None, data_dir: Optional[str] = None):
        self.cfg, self.model = cfg, cfg.model
        self._run_dir, self._data_dir = run_dir, data_dir
        self._lm = self._tok = None

    def load(self):
        """(model, tokenizer), loaded on first use."""
        if self._lm is None:
            from phi_lib.hf_models import load_causal_lm

            self._lm, self._tok = load_causal_lm(self.cfg.model, device=self.cfg.device,
                                                 dtype=self.cfg.dtype, run_dir=self._run_dir,
                                                 data_dir=self._data_dir)
            self._tok.padding_side = "left"  # decoder-only: new tokens follow the prompt
        return self._lm, self._tok

    def render(self, prompt: Prompt, chat: bool) -> str:
        """The exact text the model sees (chat template with the generation prompt)."""
        _, tok = self.load()
        if chat and tok.chat_template:
            return tok.apply_chat_template(as_messages(prompt), tokenize=False,
                                           add_generation_prompt=True)
        return as_text(prompt)

    def generate(self, prompts: Sequence[Prompt], params: SamplingConfig, *, chat: bool = True,
                 logprobs: int = 0, progress: bool = False,
                 seeds: Optional[Sequence[int]] = None) -> list[Completion]:
        seeds = check_seeds(prompts, seeds)
        lm, tok = self.load()
        texts = [self.render(p, chat) for p in prompts]
        # A chat template already starts with its special tokens; do not add a second BOS.
        encoded = [tok(t, add_special_tokens=not (chat and tok.chat_template))["input_ids"]
                   for t in texts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        out: list[Optional[Completion]] = [None] * len(prompts)
        bar = _progress_bar(len(prompts), progress)
        t0, n_tokens = time.perf_counter(), 0
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            batch = self._generate_batch([encoded[i] for i in idx], params, logprobs,
                                         [seeds[i] for i in idx])
            for i, c in zip(idx, batch):
                out[i] = c
                n_tokens += c.completion_tokens
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.1f}")
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def _generate_batch(self, ids: list[list[int]], params: SamplingConfig, logprobs: int,
                        seeds: list[Optional[int]]) -> list[Completion]:
        import torch

        lm, tok = self.load()
        batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(lm.device)
        sample = params.temperature > 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sample,
                      pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
                      output_logits=logprobs > 0)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:  # greedy: unset the sampling knobs so transformers does not warn about them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if any(s is not None for s in seeds):  # reproducible per batch of seeded prompts
            torch.manual_seed(zlib.crc32(repr(seeds).encode()))
        with torch.inference_mode():
            res = lm.generate(**batch, **kwargs)
        new = res.sequences[:, batch["input_ids"].shape[1]:].tolist()
        logp = None
        if logprobs > 0:
            logp = torch.log_softmax(torch.stack(res.logits, dim=1).float(), dim=-1)
        eos = _eos_ids(lm, tok)
        return [self._completion(tok, row, len(p), params, eos,
                                 None if logp is None else logp[b], logprobs)
                for b, (row, p) in enumerate(zip(new, ids))]

    def _completion(self, tok, row: list[int], n_prompt: int, params: SamplingConfig,
                    eos: set[int], logp, n_top: int) -> Completion:
        n, finish = len(row), "length"
        for j, t in enumerate(row):
            if t in eos:  # EOS (or padding after a finished row) ends the completion
                n, finish = j, "stop"
                break
        text = tok.decode(row[:n], skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
            n = _tokens_covering(tok, row[:n], params.stop)
        c = Completion(text=text, prompt_tokens=n_prompt, completion_tokens=n,
                       finish_reason=finish)
        if logp is not None:
            c.logprobs = [float(logp[j, t]) for j, t in enumerate(row[:n])]
            top = logp[:n].topk(n_top, dim=-1)
            c.top_logprobs = [
                {tok.decode([int(t)]): float(v) for t, v in zip(ti.tolist(), vi.tolist())}
                for ti, vi in zip(top.indices, top.values)]
        return c

    def close(self) -> None:
        self._lm = self._tok = None


def _eos_ids(lm, tok) -> set[int]:
    ids = lm.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _first_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _tokens_covering(tok, ids: list[int], stops: Sequence[str]) -> int:
    """Generated tokens up to (and including) the one that completed the first stop string."""
    for k in range(1, len(ids) + 1):
        if _first_stop(tok.decode(ids[:k], skip_special_tokens=True), stops) is not None:
            return k
    return len(ids)


def _progress_bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="prompt")
