"""Diversity report of the kept samples: distinct-n, coverage, embedding spread, plots.

phi-1/1.5 argue that diversity comes from the prompts (topics x audiences x styles); this
measures whether it reached the text: distinct-n (unique/total word n-grams), the share of
topics/audiences/styles actually used, and the mean pairwise cosine distance of MiniLM
embeddings (0 = all the same, ~1 = unrelated texts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from phi_lib.config import Config
from phi_lib.io import save_figure
from phi_lib.synth.generate import SynthSummary, read_samples
from phi_lib.synth.topics import Topic

_WORD = re.compile(r"\w+")


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


@dataclass
class DiversityReport:
    metrics: dict[str, float] = field(default_factory=dict)
    """Flat numbers for the manifest: `<kind>/distinct_2`, `all/embedding_spread`, ..."""
    figures: list[str] = field(default_factory=list)
    """PNG files written (relative to the stage dir)."""
    samples: object = None
    """A DataFrame of sample rows (kind, topic, audience, style, text head)."""
    folder: Optional[Path] = None
    """Where the figures are."""

    def show(self) -> None:
        """Display the figures inline (in a notebook)."""
        from IPython.display import Image, display

        display(*[Image(filename=str(self.folder / f)) for f in self.figures])

    def table(self):
        import pandas as pd

        rows: dict[str, dict] = {}
        for key, v in self.metrics.items():
            kind, name = key.split("/", 1)
            rows.setdefault(kind, {})[name] = round(v, 4)
        return pd.DataFrame(rows).T


def diversity_report(cfg: Config, out: Path, topics: list[Topic], summary: SynthSummary,
                     device: str = "cpu") -> DiversityReport:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    out = Path(out)
    rep = DiversityReport(folder=out)
    kinds = list(cfg.synth.kinds)
    kept = {k: read_samples(out, k) for k in kinds}
    everything = [r for k in kinds for r in kept[k]]
    for kind, recs in list(kept.items()) + [("all", everything)]:
        texts = [r["text"] for r in recs]
        for n in (1, 2, 3):
            rep.metrics[f"{kind}/distinct_{n}"] = distinct_n(texts, n)
        group = {"textbook": "general"}.get(kind, "code")
        pool = {t.name for t in topics if kind == "all" or t.group == group}
        rep.metrics[f"{kind}/topic_coverage"] = len({r["topic"] for r in recs}) / max(len(pool), 1)
        rep.metrics[f"{kind}/audience_coverage"] = (
            len({r["audience"] for r in recs}) / len(cfg.synth.audiences))
        rep.metrics[f"{kind}/style_coverage"] = len({r["style"] for r in recs}) / len(cfg.synth.styles)
        rep.metrics[f"{kind}/kept"] = float(len(recs))
    spread, emb = embedding_spread([r["text"] for r in everything], device)
    rep.metrics["all/embedding_spread"] = spread

    # 1. what was kept and why the rest was dropped
    fig, ax = plt.subplots(figsize=(7, 3.5))
    summary.table().drop(columns=["generated", "kept tokens"], errors="ignore").plot.barh(
        stacked=True, ax=ax)
    ax.set_xlabel("samples")
    ax.set_title("Kept and dropped samples per kind (drop reasons)")
    rep.figures.append(_save(fig, out / "counts.png"))
    # 2. audience x kind coverage
    if everything:
        cross = pd.crosstab(pd.Series([r["audience"] for r in everything], name="audience"),
                            pd.Series([r["kind"] for r in everything], name="kind"))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        im = ax.imshow(cross.values, cmap="Blues", aspect="auto")
        ax.set_xticks(range(cross.shape[1]), cross.columns, rotation=20)
        ax.set_yticks(range(cross.shape[0]), cross.index)
        fig.colorbar(im, ax=ax, label="kept samples")
        ax.set_title("Audience coverage of the kept samples")
        rep.figures.append(_save(fig, out / "audiences.png"))
    # 3. embedding map: where the samples lie (PCA of MiniLM embeddings)
    if emb is not None and len(emb) >= 3:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(emb)
        fig, ax = plt.subplots(figsize=(5, 4))
        labels = [r["kind"] for r in everything]
        for kind in kinds:
            m = [lab == kind for lab in labels]
            ax.scatter(xy[m, 0], xy[m, 1], label=kind, s=18)
        ax.legend()
        ax.set_title(f"MiniLM embeddings (PCA), spread {spread:.3f}")
        rep.figures.append(_save(fig, out / "embeddings.png"))
    rows = []
    for kind in kinds:
        for r in kept[kind][:max(1, cfg.synth.report_samples // max(len(kinds), 1))]:
            rows.append({"kind": kind, "topic": r["topic"], "audience": r["audience"],
                         "style": r["style"], "text": r["text"][:300]})
    rep.samples = pd.DataFrame(rows)
    rep.samples.to_csv(out / "samples.csv", index=False)
    return rep


def _save(fig, path: Path) -> str:
    save_figure(fig, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
