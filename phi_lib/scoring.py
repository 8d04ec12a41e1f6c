"""Log-likelihood scoring of text under a causal LM, computed as lm-evaluation-harness does.

    from phi_lib.scoring import loglikelihood, loglikelihood_rolling
    loglikelihood(model, tok, [("Question: 2+2?\\nAnswer:", " 4")])  # [(logprob, is_greedy)]
    loglikelihood_rolling(model, tok, ["a whole text"])                # [logprob]

Shared by benchmark evaluation (stage 06) and the toxicity stage (07). The token-level
conventions are lm-eval's `HFLM` (v0.4), so numbers agree with it:

* trailing whitespace of the context moves to the continuation, the pair is encoded as
  ``enc(context + continuation)`` and split at ``len(enc(context))``;
* an empty context is replaced by the prefix token (BOS, else EOS);
* the tokenizer's own special-token default (no BOS for GPT-2-like tokenizers), except that
  a string already starting with the BOS text is not given a second one;
* too-long inputs are cut from the left to ``max_length + 1`` tokens;
* `is_greedy` = every continuation token is the argmax of its position;
* rolling log-likelihood = disjoint windows of ``max_length`` tokens, the first predicted
  from the prefix token (lm-eval's ``get_rolling_token_windows``, context_len 1).

Speed (the harness scores many choices per question): requests are grouped by context;
a group of several continuations runs the shared context once and the continuations
together on its KV cache, instead of re-running the context for every choice. Other
requests are batched longest-first, right-padded, exactly as lm-eval does.
"""
from __future__ import annotations

import inspect

from collections import defaultdict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_TOKENIZER_INFINITY = 1000000000000000019884624838656
_MIN_SHARED_CONTEXT = 8
"""Contexts shorter than this are not worth a separate cached pass."""


# ----------------------------------------------------------------------------- tokenization
def prefix_token_id(tokenizer) -> int:
    """What conditions an empty context: BOS if the tokenizer has one, else EOS (lm-eval)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer, text: str, add_special_tokens: Optional[bool] = None) -> list[int]:
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False  # already has its BOS
    return tokenizer.encode(text, **kwargs)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-eval's `loglikelihood` makes them."""
    if context == "":
        cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def max_length(model, tokenizer, default: int = 2048) -> int:
    """The model's context length, looked up as lm-eval's `resolve_max_length` does."""
    cfg = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    mml = getattr(tokenizer, "model_max_length", None)
    return int(mml) if mml is not None and mml != _TOKENIZER_INFINITY else default


# ----------------------------------------------------------------------------- scoring
def loglikelihood(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                  *, share_context: bool = True,
                  progress: bool = False) -> list[tuple[float, bool]]:
    """Sum log-probability of each continuation given its context, and whether it is greedy."""
    pairs = [encode_pair(tokenizer, c, x) for c, x in requests]
    return loglikelihood_tokens(model, pairs, batch_size, max_len=max_length(model, tokenizer),
                                share_context=share_context, progress=progress)


def loglikelihood_rolling(model, tokenizer, texts: Sequence[str], batch_size: int = 16,
                          *, progress: bool = False) -> list[float]:
    """Log-likelihood of each whole text (perplexity scoring), lm-eval's rolling windows."""
    max_len = max_length(model, tokenizer)
    prefix = prefix_token_id(tokenizer)
    windows, owner = [], []
    for i, text in enumerate(texts):
        for w in rolling_windows(tok_encode(tokenizer, text), prefix, max_len):
            windows.append(w)
            owner.append(i)
    scores = loglikelihood_tokens(model, windows, batch_size, max_len=max_len,
                                  share_context=False, progress=progress)
    totals = [0.0] * len(texts)
    for i, (lp, _) in zip(owner, scores):
        totals[i] += lp
    return totals


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list, list]]:
    """Disjoint (context, predicted) windows covering `tokens` (lm-eval, context_len=1)."""
    out, done = [], 0
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([prefix] + tokens[:first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        ctx = tokens[end - max_len - 1:end - 1]
        out.append((ctx, tokens[end - n:end]))
        done += n
    # make_disjoint_window: drop the context tokens the window also predicts
    return [(c[:len(c) - (len(p) - 1)], p) for c, p in out]


def loglikelihood_tokens(model, pairs: Sequence[tuple[list[int], list[int]]],
                         batch_size: int = 16, *, max_len: int = 2048,
                         share_context: bool = True,
                         progress: bool = False) -> list[tuple[float, bool]]:
    """Score token-level (context, continuation) pairs; results in input order."""
    results: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
    plain, shared = [], []
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"request {i}: empty context or continuation tokens")
        groups[tuple(ctx)].append(i)
    for ctx, idx in groups.items():
        fits = all(len(ctx) + len(pairs[i][1]) <= max_len for i in idx)
        if share_context and len(idx) > 1 and len(ctx) >= _MIN_SHARED_CONTEXT and fits:
            shared.append(idx)
        else:
            plain.extend(idx)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="log-likelihood")
    with torch.inference_mode():
        # contexts longest first; `batch_size` contexts (all their continuations) per step
        shared.sort(key=lambda idx: -len(pairs[idx[0]][0]))
        for s in range(0, len(shared), batch_size):
            groups_ = shared[s:s + batch_size]
            scored = _score_shared(model, [pairs[g[0]][0] for g in groups_],
                                   [[pairs[i][1] for i in g] for g in groups_])
            for g, res in zip(groups_, scored):
                for i, r in zip(g, res):
                    results[i] = r
            if bar:
                bar.update(sum(len(g) for g in groups_))
        # lm-eval order: longest first, so padding is small and OOMs happen at once
        plain.sort(key=lambda i: (-len(pairs[i][0]) - len(pairs[i][1]),
                                  tuple(pairs[i][0] + pairs[i][1])))
        for s in range(0, len(plain), batch_size):
            chunk = plain[s:s + batch_size]
            for i, r in zip(chunk, _score_plain(model, [pairs[i] for i in chunk], max_len)):
                results[i] = r
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()
    return results  # type: ignore[return-value]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _score(logprobs: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
    """logprobs: (len(cont), vocab) log-softmax rows predicting each continuation token."""
    target = torch.tensor(cont, device=logprobs.device)
    greedy = bool((logprobs.argmax(-1) == target).all())
    return float(logprobs.gather(1, target[:, None]).sum()), greedy


def _score_plain(model, chunk, max_len: int) -> list[tuple[float, bool]]:
    """lm-eval's path: (ctx + cont)[:-1], left-truncated, right-padded, one forward."""
    inps = [(c + x)[-(max_len + 1):][:-1] for c, x in chunk]
    width = max(len(t) for t in inps)
    batch = torch.zeros(len(inps), width, dtype=torch.long)
    for r, t in enumerate(inps):
        batch[r, :len(t)] = torch.tensor(t)
    logits = model(batch.to(_device(model))).logits
    logprobs = F.log_softmax(logits, dim=-1)
    out = []
    for r, ((_, cont), inp) in enumerate(zip(chunk, inps)):
        n = len(cont)
        out.append(_score(logprobs[r, len(inp) - n:len(inp)], cont))
    return out


def _score_shared(model, ctxs: list[list[int]],
                  conts: list[list[list[int]]]) -> list[list[tuple[float, bool]]]:
    """Contexts run once (one right-padded batch); then every continuation of every context
    runs in one batch on its context's rows of the KV cache (padding masked out, positions
    continuing from each context's true length)."""
    dev = _device(model)
    lens = [len(c) for c in ctxs]
    width_c = max(lens)
    ids = torch.zeros(len(ctxs), width_c, dtype=torch.long)
    mask_c = torch.zeros(len(ctxs), width_c, dtype=torch.long)
    for r, c in enumerate(ctxs):
        ids[r, :len(c)] = torch.tensor(c)
        mask_c[r, :len(c)] = 1
    first = model(ids.to(dev), attention_mask=mask_c.to(dev), use_cache=True)
    last = torch.stack([first.logits[r, n - 1] for r, n in enumerate(lens)])
    first_lp = F.log_softmax(last, dim=-1)  # row g predicts token 0 of each of g's conts
    owner = [g for g, cs in enumerate(conts) for _ in cs]
    flat = [c for cs in conts for c in cs]
    tails = [c[:-1] for c in flat]  # the last token is predicted, never fed
    width = max(len(t) for t in tails)
    results: list[tuple[float, bool]] = []
    if width == 0:  # one-token continuations: the context pass already scored them
        results = [_score(first_lp[g:g + 1], c) for g, c in zip(owner, flat)]
    else:
        n = len(flat)
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width_c + width, dtype=torch.long)
        pos = torch.zeros(n, width, dtype=torch.long)
        for r, (g, t) in enumerate(zip(owner, tails)):
            ids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
            mask[r, :lens[g]] = 1
            mask[r, width_c:width_c + len(t)] = 1
            pos[r] = torch.arange(lens[g], lens[g] + width)
        past = _select_cache(_output_cache(first), torch.tensor(owner, device=dev))
        logits = model(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                       use_cache=True, **{_cache_kwarg(model): past}).logits
        logprobs = F.log_softmax(logits, dim=-1)
        for r, (g, c) in enumerate(zip(owner, flat)):
            rows = torch.cat([first_lp[g:g + 1], logprobs[r, :len(c) - 1]], dim=0)
            results.append(_score(rows, c))
    out, k = [], 0
    for cs in conts:
        out.append(results[k:k + len(cs)])
        k += len(cs)
    return out


def _cache_kwarg(model) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _select_cache(cache, index: torch.Tensor):
    """The KV cache with batch rows `index` (a row per continuation, from its context)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
