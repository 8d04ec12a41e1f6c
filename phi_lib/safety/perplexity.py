"""Perplexity of each ToxiGen statement under a model, resumable one group at a time.

Scoring is `phi_lib.scoring.loglikelihood_rolling` (lm-eval's rolling log-likelihood: every
token of the statement is predicted, the first one from the BOS/EOS prefix token); the token
count is that of the same encoding (`scoring.tok_encode`). A group's scores are written to
`<out>/<group>.jsonl` when the group is done, each line with the group's fingerprint key (the
stage's `group_fingerprint`: sampling settings, the model's content identity, the group's
ToxiGen files), so a rerun reloads finished groups and rescores only the stale ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from phi_lib.io import ReadStats, atomic_open, read_jsonl
from phi_lib.safety.safety_score import perplexity
from phi_lib.scoring import loglikelihood_rolling, tok_encode


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> list[dict]:
    """`{"loglik", "n_tokens", "ppl"}` per text."""
    lls = loglikelihood_rolling(model, tokenizer, texts, batch_size=batch_size)
    out = []
    for text, ll in zip(texts, lls):
        n = len(tok_encode(tokenizer, text))
        out.append({"loglik": ll, "n_tokens": n, "ppl": perplexity(ll, n)})
    return out


def score_statements(statements: Sequence[dict], out_dir: Path, load: Callable[[], tuple],
                     fingerprints: Mapping[str, str], *, batch_size: int = 16,
                     progress: bool = True, stats: Optional[ReadStats] = None,
                     name: str = "") -> tuple[list[dict], list[str]]:
    """(every statement with its `loglik`, `n_tokens`, `ppl`; the groups scored now).

    `fingerprints` maps each group to the key its records must carry to be reused; `load()`
    gives (model, tokenizer) and is called only if some group is not current. Corrupt cached
    lines are counted in `stats`; their group is rescored."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    by_group: dict[str, list[dict]] = {}
    for s in statements:
        by_group.setdefault(s["group"], []).append(s)
    loaded, result, scored = None, [], []
    for group, items in tqdm(by_group.items(), desc=f"toxigen {name}", disable=not progress):
        path = out_dir / f"{group}.jsonl"
        fp = fingerprints[group]
        cached = _cached(path, fp, items, stats)
        if cached is None:
            loaded = loaded or load()
            scores = score_texts(*loaded, [s["text"] for s in items], batch_size)
            cached = [{**s, **sc, "fingerprint": fp} for s, sc in zip(items, scores)]
            with atomic_open(path, "w", encoding="utf-8") as f:
                for rec in cached:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            scored.append(group)
        result += cached
    return result, scored


def _cached(path: Path, fp: str, items: Sequence[dict],
            stats: Optional[ReadStats]) -> Optional[list[dict]]:
    """The group's records if whole, made under `fp` and of these very statements."""
    if not path.is_file():
        return None
    local = ReadStats()
    recs = list(read_jsonl(path, local))
    if stats is not None:
        stats.corrupt += local.corrupt
    if local.corrupt or any(r.get("fingerprint") != fp for r in recs) or \
            [(r.get("id"), r.get("text")) for r in recs] != [(s["id"], s["text"]) for s in items]:
        return None
    return recs
