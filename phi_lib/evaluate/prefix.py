"""Few-shot MMLU without re-running its shared prefix: the description and the k dev examples of
a subject are the same tokens in every question of that subject, so they run once per subject
and every question runs only its own tokens on that prefix's KV cache.

Item-identical to `scoring.loglikelihood` (lm-eval's requests): the cached prefix is the tokens
all contexts of a subject start with as lm-eval tokenizes them (not the prefix text's own
tokens, which a BPE merge at the boundary can change), and only one-token continuations (MMLU's
letters: the logits at the context's last position score them) take this path; every other
request goes to `scoring.loglikelihood`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F

from phi_lib.scoring import Forward, _cache_rows, _device, encode_pair, loglikelihood, tok_encode


def loglikelihood_prefixed(model, tokenizer, requests: Sequence[tuple[str, str]],
                           prefixes: Sequence[str], batch_size: int = 16
                           ) -> list[tuple[float, bool]]:
    """(sum log p, is greedy) per (context, continuation), `prefixes[i]` the shared start of
    request i's context; results in input order."""
    results: list = [None] * len(requests)
    pairs = [encode_pair(tokenizer, c, x) for c, x in requests]
    groups: dict[str, list[int]] = defaultdict(list)
    rest = []
    for i, ((ctx, cont), p) in enumerate(zip(pairs, prefixes)):
        (groups[p] if p and len(cont) == 1 else rest).append(i)
    by_prefix: dict[str, list[int]] = {}
    prefix_ids: dict[str, list[int]] = {}
    for p, idx in groups.items():
        # the tokens every context of the group starts with, as lm-eval tokenized them (a
        # BPE merge at the text boundary just moves it), leaving each context a suffix
        n = _common_prefix_len([pairs[i][0] for i in idx])
        n = min(n, min(len(pairs[i][0]) for i in idx) - 1)
        if len(idx) > 1 and n >= len(tok_encode(tokenizer, p)) // 2:
            by_prefix[p], prefix_ids[p] = idx, pairs[idx[0]][0][:n]
        else:
            rest += idx
    with torch.inference_mode():
        for p, idx in by_prefix.items():
            for i, r in zip(idx, _score_on_prefix(model, prefix_ids[p], [pairs[i] for i in idx],
                                                  batch_size)):
                results[i] = r
    if rest:
        for i, r in zip(rest, loglikelihood(model, tokenizer, [requests[i] for i in rest],
                                            batch_size)):
            results[i] = r
    return results


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _score_on_prefix(model, prefix: list[int], pairs: list[tuple[list[int], list[int]]],
                     batch_size: int) -> list[tuple[float, bool]]:
    """The prefix runs once; then contexts that share a suffix run once (their choices are
    scored from one row of logits), `batch_size` suffixes per forward on the prefix's cache."""
    dev = _device(model)
    fwd = Forward.of(model)
    _, cache = fwd(torch.tensor([prefix], device=dev), use_cache=True)
    suffixes: dict[tuple, list[int]] = defaultdict(list)
    for k, (ctx, _) in enumerate(pairs):
        suffixes[tuple(ctx[len(prefix):])].append(k)
    order = sorted(suffixes, key=lambda s: -len(s))  # similar lengths together: little padding
    out: list = [None] * len(pairs)
    n_p = len(prefix)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        width = max(len(t) for t in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), n_p + width, dtype=torch.long)
        mask[:, :n_p] = 1
        for r, t in enumerate(chunk):
            ids[r, :len(t)] = torch.tensor(t)
            mask[r, n_p:n_p + len(t)] = 1
        pos = torch.arange(n_p, n_p + width).expand(len(chunk), width)
        past = _cache_rows(cache, torch.zeros(len(chunk), dtype=torch.long, device=dev))
        states, _ = fwd(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                        use_cache=True, past=past)
        # the last row of each suffix predicts the choice: the output layer runs on those only
        last = F.log_softmax(fwd.logits(torch.stack([states[r, len(t) - 1] for r, t in enumerate(chunk)])), -1)
        for r, t in enumerate(chunk):
            lp, best = last[r], int(last[r].argmax())
            for k in suffixes[t]:
                tok = pairs[k][1][0]
                out[k] = (float(lp[tok]), best == tok)
    return out
