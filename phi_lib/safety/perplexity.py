"""Perplexity of each ToxiGen statement under a model, resumable one group at a time.

Scoring is `phi_lib.scoring.loglikelihood_rolling` (lm-eval's rolling log-likelihood: every
token of the statement is predicted, the first one from the BOS/EOS prefix token); the token
count is that of the same encoding (`scoring.tok_encode`). A group's scores are written to
`<out>/<group>.jsonl` when the group is done, under a fingerprint of the model name and the
statements, so a rerun reloads finished groups, and a changed sample or model (`checkpoint`
after retraining: `hf_models.model_identity`) rescores them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from phi_lib.io import ReadStats, atomic_open, read_jsonl
from phi_lib.safety.safety_score import perplexity
from phi_lib.scoring import loglikelihood_rolling, tok_encode


def fingerprint(model_id: str, statements: Sequence[dict]) -> str:
    blob = json.dumps([model_id, [(s["id"], s["text"]) for s in statements]], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> list[dict]:
    """`{"loglik", "n_tokens", "ppl"}` per text."""
    lls = loglikelihood_rolling(model, tokenizer, texts, batch_size=batch_size)
    out = []
    for text, ll in zip(texts, lls):
        n = len(tok_encode(tokenizer, text))
        out.append({"loglik": ll, "n_tokens": n, "ppl": perplexity(ll, n)})
    return out


def score_statements(model_id: str, statements: Sequence[dict], out_dir: Path,
                     load: Callable[[], tuple], *, batch_size: int = 16, progress: bool = True,
                     stats: Optional[ReadStats] = None, name: str = "") -> list[dict]:
    """Every statement with its `loglik`, `n_tokens`, `ppl`; `load()` gives (model, tokenizer)
    and is called only if some group is not scored yet (`model_id` names the model in the
    cache fingerprint). Corrupt cached lines are counted in `stats`; their group is rescored."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    by_group: dict[str, list[dict]] = {}
    for s in statements:
        by_group.setdefault(s["group"], []).append(s)
    loaded = None
    result = []
    for group, items in tqdm(by_group.items(), desc=f"toxigen {name or model_id}", disable=not progress):
        path = out_dir / f"{group}.jsonl"
        fp = fingerprint(model_id, items)
        cached = _cached(path, fp, len(items), stats)
        if cached is None:
            loaded = loaded or load()
            scores = score_texts(*loaded, [s["text"] for s in items], batch_size)
            cached = [{**s, **sc, "fingerprint": fp} for s, sc in zip(items, scores)]
            with atomic_open(path, "w", encoding="utf-8") as f:
                for rec in cached:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        result += cached
    return result


def _cached(path: Path, fp: str, n: int, stats: Optional[ReadStats]) -> Optional[list[dict]]:
    if not path.is_file():
        return None
    local = ReadStats()
    recs = list(read_jsonl(path, local))
    if stats is not None:
        stats.corrupt += local.corrupt
    if local.corrupt or len(recs) != n or any(r.get("fingerprint") != fp for r in recs):
        return None
    return recs
