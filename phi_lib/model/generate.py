"""Generation with a KV cache: batched left-padded prompts, greedy / temperature / top-k /
top-p sampling, EOS and stop strings (base models do not stop by themselves).

    out = generate(model, ids, mask, max_new_tokens=64, temperature=0)   # tensor, HF-style
    texts = generate_text(model, tok, ["def fib(n):"], stop=["\\ndef "])  # strings
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token per row of logits (B, V): argmax when temperature is 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token lists, padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(model, input_ids: Union[torch.Tensor, Sequence[Sequence[int]]],
             attention_mask: Optional[torch.Tensor] = None, *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: Optional[int] = -1, pad_token_id: Optional[int] = None,
             stop: Sequence[str] = (), tokenizer=None, allowed_vocab: Optional[int] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Prompt + new tokens, (B, T + n); rows that finished early are padded with `pad_token_id`.

    input_ids:     (B, T) left-padded with `attention_mask`, or a list of token lists.
    eos_token_id:  a row ends when it emits it (default: the config's; None = never).
    stop:          strings that end a row (checked on the decoded new tokens; needs
                   `tokenizer.decode`). The tokens stay in the output: `generate_text` cuts them.
    allowed_vocab: only sample ids below this (the padded embedding rows are never real tokens).

    LongRoPE models recompute the whole cache once, when the (padded) sequence reaches
    original_max_position_embeddings + 1 tokens, as transformers does.
    """
    config = model.config
    if eos_token_id == -1:
        eos_token_id = config.eos_token_id
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to decode the new tokens")
    device = model.device
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad_token_id, device)
    input_ids = input_ids.to(device)
    b, t = input_ids.shape
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask.to(device).long() if padded else None
    # positions count real tokens only, so a left-padded prompt starts at position 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if padded else None
    cache = model.new_cache(max_length=t + max_new_tokens)
    longrope_switch = config.original_max_position_embeddings if config.rope_type == "longrope" else None
    logits = model(input_ids, attention_mask=mask, position_ids=pos, cache=cache, logits_to_keep=1)

    out = input_ids.new_full((b, max_new_tokens), pad_token_id)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    max_stop = max((len(s) for s in stop), default=0)
    n = 0
    for n in range(1, max_new_tokens + 1):
        step_logits = logits[:, -1]
        if allowed_vocab is not None and allowed_vocab < step_logits.shape[-1]:
            step_logits = step_logits.clone()
            step_logits[:, allowed_vocab:] = float("-inf")
        token = sample_next(step_logits, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, pad_token_id)
        out[:, n - 1] = token
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if stop:
            finished |= _hits_stop(out[:, :n], finished, stop, max_stop, tokenizer)
        if n == max_new_tokens or bool(finished.all()):
            break
        if padded:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            pos = pos[:, -1:] + 1
        if cache.length == longrope_switch:
            # LongRoPE moves to its long factors once a sequence passes original_max: the cached
            # keys were rotated with the short ones, so recompute them all (transformers'
            # Phi3ForCausalLM drops its cache at exactly this step)
            cache = model.new_cache(max_length=t + max_new_tokens)
            seq = torch.cat([input_ids, out[:, :n]], dim=1)
            full_pos = (mask.cumsum(-1) - 1).clamp(min=0) if padded else None
            logits = model(seq, attention_mask=mask, position_ids=full_pos, cache=cache, logits_to_keep=1)
        else:
            logits = model(token[:, None], attention_mask=mask, position_ids=pos, cache=cache)
    return torch.cat([input_ids, out[:, :n]], dim=1)


def _hits_stop(new_tokens: torch.Tensor, finished: torch.Tensor, stop: Sequence[str],
               max_stop: int, tokenizer) -> torch.Tensor:
    """Rows whose recent text contains a stop string (only the tail can hold a new hit)."""
    hit = torch.zeros_like(finished)
    tail = max_stop + 8  # tokens: each decodes to >= 1 char except split multi-byte chars
    for i in (~finished).nonzero().flatten().tolist():
        text = tokenizer.decode(new_tokens[i, -tail:].tolist())
        hit[i] = any(s in text for s in stop)
    return hit


def generate_text(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                  stop: Sequence[str] = (), batch_size: int = 8, seed: Optional[int] = None) -> list[str]:
    """Completions (new text only, cut before the first stop string) of `prompts`.

    `tokenizer` is a `phi_lib.data.tokenizer.PhiTokenizer` (encode/decode/eos_id). Prompts are
    batched by length so little compute goes to padding.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    encoded = [tokenizer.encode(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], tokenizer.eos_id, model.device)
        seqs = generate(model, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, top_k=top_k, eos_token_id=tokenizer.eos_id, stop=stop,
                        tokenizer=tokenizer, allowed_vocab=len(tokenizer), generator=generator)
        for row, i in enumerate(idx):
            new = seqs[row, ids.shape[1]:].tolist()
            if tokenizer.eos_id in new:
                new = new[:new.index(tokenizer.eos_id)]
            results[i] = cut_at_stop(tokenizer.decode(new), stop)
    return results


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text
