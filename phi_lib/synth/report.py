"""Diversity report of the kept samples: distinct-n, coverage, embedding spread, plots.

phi-1/1.5 argue that diversity comes from the prompts (topics x audiences x styles); this
measures whether it reached the text: distinct-n (unique/total word n-grams), the share of
topics/audiences/styles actually used, and the mean pairwise cosine distance of MiniLM
embeddings (0 = all the same, ~1 = unrelated texts). The plots are built here and saved by
the stage (phi_lib.synth.stage).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from phi_lib.config import Config
from phi_lib.synth.topics import Topic

_WORD = re.compile(r"\w+")
EMBED_SAMPLES = 2000
"""Most samples embedded for the spread (a random sample of them beyond that)."""


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over `texts` (Li et al. 2016); NaN (undefined,
    `null` in the manifest) when there are none, e.g. a kind that kept no sample."""
    total, unique = 0, set()
    for t in texts:
        w = _WORD.findall(t.lower())
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else float("nan")


def embedding_spread(texts: list[str], device: str = "cpu") -> tuple[float, Optional[np.ndarray]]:
    """(mean pairwise cosine distance, embeddings) with MiniLM; (0, None) for < 2 texts."""
    if len(texts) < 2:
        return 0.0, None
    from phi_lib.embed import MiniLMEmbedder

    emb = MiniLMEmbedder(batch_size=32, device=device).embed(texts)  # unit-norm rows
    sim = emb @ emb.T
    iu = np.triu_indices(len(texts), k=1)
    return float(np.mean(1.0 - sim[iu])), emb


def diversity_metrics(cfg: Config, kept: dict[str, list[dict]], topics: list[Topic],
                      device: str = "cpu") -> tuple[dict[str, float], Optional[np.ndarray], list[dict]]:
    """(metrics, embeddings, the records embedded) of the kept samples per kind and `all`:
    `<kind>/distinct_{1,2,3}`, `<kind>/{topic,audience,style}_coverage`,
    `all/embedding_spread` (over at most EMBED_SAMPLES samples, drawn with the run seed)."""
    metrics: dict[str, float] = {}
    everything = [r for k in kept for r in kept[k]]
    for kind, recs in list(kept.items()) + [("all", everything)]:
        texts = [r["text"] for r in recs]
        for n in (1, 2, 3):
            metrics[f"{kind}/distinct_{n}"] = distinct_n(texts, n)
        group = {"textbook": "general"}.get(kind, "code")
        pool = {t.name for t in topics if kind == "all" or t.group == group}
        metrics[f"{kind}/topic_coverage"] = len({r["topic"] for r in recs}) / max(len(pool), 1)
        metrics[f"{kind}/audience_coverage"] = len({r["audience"] for r in recs}) / len(cfg.synth.audiences)
        metrics[f"{kind}/style_coverage"] = len({r["style"] for r in recs}) / len(cfg.synth.styles)
    sample = everything
    if len(sample) > EMBED_SAMPLES:  # the pairwise matrix is quadratic: estimate on a sample
        import random

        sample = random.Random(cfg.run.seed).sample(everything, EMBED_SAMPLES)
    spread, emb = embedding_spread([r["text"] for r in sample], device)
    metrics["all/embedding_spread"] = spread
    return metrics, emb, sample


def metrics_table(metrics: dict[str, float]):
    """Diversity metrics as a DataFrame (kinds x metrics)."""
    import pandas as pd

    rows: dict[str, dict] = {}
    for key, v in metrics.items():
        kind, name = key.split("/", 1)
        rows.setdefault(kind, {})[name] = None if v is None else round(v, 4)
    return pd.DataFrame(rows).T


def counts_figure(table):
    """Kept and dropped samples per kind, by drop reason (the filter step's table)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    table.drop(columns=["generated", "kept tokens"], errors="ignore").plot.barh(stacked=True, ax=ax)
    ax.set_xlabel("samples")
    ax.set_title("Kept and dropped samples per kind (drop reasons)")
    return fig


def audiences_figure(records: list[dict]):
    """Audience x kind coverage of the kept samples (None without any)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    if not records:
        return None
    cross = pd.crosstab(pd.Series([r["audience"] for r in records], name="audience"),
                        pd.Series([r["kind"] for r in records], name="kind"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    im = ax.imshow(cross.values, cmap="Blues", aspect="auto")
    ax.set_xticks(range(cross.shape[1]), cross.columns, rotation=20)
    ax.set_yticks(range(cross.shape[0]), cross.index)
    fig.colorbar(im, ax=ax, label="kept samples")
    ax.set_title("Audience coverage of the kept samples")
    return fig


def embeddings_figure(emb: Optional[np.ndarray], records: list[dict], kinds: list[str],
                      spread: float):
    """Where the samples lie: PCA of their MiniLM embeddings (None for fewer than 3)."""
    if emb is None or len(emb) < 3:
        return None
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(emb)
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = [r["kind"] for r in records]
    for kind in kinds:
        m = [lab == kind for lab in labels]
        ax.scatter(xy[m, 0], xy[m, 1], label=kind, s=18)
    ax.legend()
    ax.set_title(f"MiniLM embeddings (PCA), spread {spread:.3f}")
    return fig


def samples_table(kept: dict[str, list[dict]], n: int):
    """About `n` kept samples, spread over the kinds (kind, topic, audience, style, text head)."""
    import pandas as pd

    rows = []
    for kind, recs in kept.items():
        for r in recs[:max(1, n // max(len(kept), 1))]:
            rows.append({"kind": kind, "topic": r["topic"], "audience": r["audience"],
                         "style": r["style"], "text": r["text"][:300]})
    return pd.DataFrame(rows, columns=["kind", "topic", "audience", "style", "text"])
