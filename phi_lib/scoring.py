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
requests are batched longest-first, right-padded, exactly as lm-eval does. The output layer
(a vocab-wide matmul, ~20% of a small model's FLOPs) and the log-softmax run only on the
positions that predict a scored token, not on every position of the padded batch.
"""
from __future__ import annotations

import copy
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


def _score_plain(model, chunk, max_len: int) -> list[tuple[float, bool]]:
    """lm-eval's path: (ctx + cont)[:-1], left-truncated, right-padded, one forward."""
    fwd = Forward.of(model)
    inps = [(c + x)[-(max_len + 1):][:-1] for c, x in chunk]
    width = max(len(t) for t in inps)
    batch = torch.zeros(len(inps), width, dtype=torch.long)
    for r, t in enumerate(inps):
        batch[r, :len(t)] = torch.tensor(t)
    states, _ = fwd(batch.to(_device(model)))
    rows = [(r, len(inp) - len(cont), len(inp)) for r, ((_, cont), inp) in enumerate(zip(chunk, inps))]
    scored = fwd.logprob_rows(states, rows, [cont for _, cont in chunk])
    return [_score_rows(sc, cont) for sc, (_, cont) in zip(scored, chunk)]


def _score_rows(scored: tuple[torch.Tensor, torch.Tensor], cont: list[int]) -> tuple[float, bool]:
    """(log p of each continuation token, argmax of each position) -> (sum, is greedy)."""
    lp, best = scored
    return float(lp.sum()), bool((best == torch.tensor(cont, device=best.device)).all())


def _score_shared(model, ctxs: list[list[int]],
                  conts: list[list[list[int]]]) -> list[list[tuple[float, bool]]]:
    """Contexts run once (one right-padded batch); then the continuations of all these contexts
    run on their context's rows of the KV cache (padding masked out, positions continuing from
    each context's true length), in batches of similar length."""
    dev = _device(model)
    fwd = Forward.of(model)
    lens = [len(c) for c in ctxs]
    width_c = max(lens)
    ids = torch.zeros(len(ctxs), width_c, dtype=torch.long)
    mask_c = torch.zeros(len(ctxs), width_c, dtype=torch.long)
    for r, c in enumerate(ctxs):
        ids[r, :len(c)] = torch.tensor(c)
        mask_c[r, :len(c)] = 1
    states, cache = fwd(ids.to(dev), attention_mask=mask_c.to(dev), use_cache=True)
    # row g of the context pass predicts token 0 of each of g's continuations
    first_lp = F.log_softmax(fwd.logits(torch.stack([states[r, n - 1] for r, n in enumerate(lens)])), -1)
    owner = [g for g, cs in enumerate(conts) for _ in cs]
    flat = [c for cs in conts for c in cs]
    firsts = [(first_lp[g, c[0]].reshape(1), first_lp[g].argmax().reshape(1)) for g, c in zip(owner, flat)]
    results: list = [_score_rows(f, c) if len(c) == 1 else None for f, c in zip(firsts, flat)]
    longer = sorted((r for r, c in enumerate(flat) if len(c) > 1), key=lambda r: -len(flat[r]))
    for chunk in _length_chunks([len(flat[r]) - 1 for r in longer]):
        # continuation rows of similar length together: the padding of one batch of all of
        # them was 2-3x their tokens on ARC and HellaSwag
        rows = [longer[k] for k in chunk]
        width = len(flat[rows[0]]) - 1
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width_c + width, dtype=torch.long)
        pos = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            tail, g = flat[r][:-1], owner[r]  # the last token is predicted, never fed
            ids[i, :len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[i, :lens[g]] = 1
            mask[i, width_c:width_c + len(tail)] = 1
            pos[i] = torch.arange(lens[g], lens[g] + width)
        past = _cache_rows(cache, torch.tensor([owner[r] for r in rows], device=dev))
        states, _ = fwd(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                        use_cache=True, past=past)
        # positions 0..len(c)-2 of a continuation's row predict its tokens 1..len(c)-1
        scored = fwd.logprob_rows(states, [(i, 0, len(flat[r]) - 1) for i, r in enumerate(rows)],
                                  [flat[r][1:] for r in rows])
        for r, (lp, best) in zip(rows, scored):
            f = firsts[r]
            results[r] = _score_rows((torch.cat([f[0], lp]), torch.cat([f[1], best])), flat[r])
    out, k = [], 0
    for cs in conts:
        out.append(results[k:k + len(cs)])
        k += len(cs)
    return out


class Forward:
    """A model's forward pass up to the output layer when that is exact for the model, so that
    logits are computed for the scored positions only.

    `fwd(ids, ...)` -> (states, cache): the final hidden states (B, T, hidden) when the model
    splits into a decoder and an output layer whose composition gives its logits (checked once
    per model on a probe), else the logits themselves; `fwd.logits(rows)` maps gathered rows of
    states to logits (the output layer, or nothing)."""

    _known: Optional["weakref.WeakKeyDictionary"] = None  # model -> its Forward

    def __init__(self, model):
        self.model, self.kwarg = model, _cache_kwarg(model)
        self.body = self.head = None
        decoder = getattr(model, "get_decoder", lambda: None)()
        head = getattr(model, "get_output_embeddings", lambda: None)()
        if decoder is not None and head is not None and decoder is not model:
            probe = torch.arange(1, 9, device=_device(model))[None] % model.config.get_text_config().vocab_size
            with torch.inference_mode():
                want = model(probe).logits.float()
                got = head(decoder(probe).last_hidden_state).float()
            if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                self.body, self.head = decoder, head
                self.kwarg = _cache_kwarg(decoder)

    @classmethod
    def of(cls, model) -> "Forward":
        import weakref

        if cls._known is None:
            cls._known = weakref.WeakKeyDictionary()
        if model not in cls._known:
            cls._known[model] = cls(model)
        return cls._known[model]

    def __call__(self, ids, past=None, **kw):
        if past is not None:
            kw[self.kwarg] = past
        if self.body is None:
            out = self.model(ids, **kw)
            return out.logits, _output_cache(out) if kw.get("use_cache") else None
        out = self.body(ids, **kw)
        return out.last_hidden_state, _output_cache(out) if kw.get("use_cache") else None

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return (self.head(rows) if self.head is not None else rows).float()

    def logprob_rows(self, states: torch.Tensor, spans: list[tuple[int, int, int]],
                     targets: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each (row, start, end) of `states` and the tokens those positions predict:
        (log p of each target token, the argmax of each position), from one output-layer call
        over all the gathered positions (log p = logit - logsumexp: no vocab-wide log-softmax
        tensor)."""
        rows = [r for r, a, b in spans for _ in range(a, b)]
        cols = [t for _, a, b in spans for t in range(a, b)]
        flat = [t for tg in targets for t in tg]
        assert len(flat) == len(rows), "a target token per gathered position"
        if not rows:
            empty = torch.zeros(0, device=states.device)
            return [(empty, empty.long()) for _ in spans]
        dev = states.device
        logits = self.logits(states[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)])
        tgt = torch.tensor(flat, dtype=torch.long, device=logits.device)
        lp = logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        best = logits.argmax(-1)
        out, k = [], 0
        for _, a, b in spans:
            out.append((lp[k:k + b - a], best[k:k + b - a]))
            k += b - a
        return out


def _cache_kwarg(model) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


_FORWARD_COST = 16
"""A forward pass's fixed cost, in token positions of a small model on CPU (measured: ~10 ms of
Python and kernel launches per call vs ~0.6 ms per position for SmolLM2-135M)."""


def _length_chunks(lengths: list[int]) -> list[list[int]]:
    """Split rows of decreasing `lengths` into consecutive batches minimizing the padded
    positions plus a fixed cost per batch (an exact partition by dynamic programming)."""
    n = len(lengths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[i] + _FORWARD_COST
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(list(range(cut[j], j)))
        j = cut[j]
    return chunks[::-1]


def _cache_rows(cache, index: torch.Tensor):
    """A KV cache holding batch rows `index` of `cache` (one row per continuation, from its
    context's row); `cache` itself is left as it is, for the next batch of rows."""
    if isinstance(cache, tuple):  # the legacy format
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
    new = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers' Cache: selection reassigns each layer's tensors
        new.layers = [copy.copy(layer) for layer in cache.layers]
    elif hasattr(cache, "k"):  # phi_lib.model.cache.KVCache
        new.k, new.v = list(cache.k), list(cache.v)
    else:
        new = copy.deepcopy(cache)
    new.batch_select_indices(index)
    return new
