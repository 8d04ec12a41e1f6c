"""Tables and plots of stage 08: the data, the two phases, and base vs SFT vs DPO side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def sources_table(stats: dict):
    """Per source: records available, taken into the set, epochs, and drops by reason."""
    import pandas as pd

    drops: dict[str, dict] = {}
    for key, n in (stats.get("drops") or {}).items():
        _, source, reason = key.split("/", 2)
        drops.setdefault(source, {})[f"dropped: {reason}"] = n
    rows = [{"source": name, **st, **drops.get(name, {})} for name, st in stats["sources"].items()]
    return pd.DataFrame(rows).set_index("source").fillna(0) if rows else pd.DataFrame()


def conversations_table(path: Path, tok_dir: Path, n: int = 3):
    """A few SFT conversations as the model sees them (its chat template)."""
    import pandas as pd
    from transformers import AutoTokenizer

    from phi_lib.io import read_jsonl

    tok = AutoTokenizer.from_pretrained(tok_dir)
    rows = []
    for rec in read_jsonl(path):
        rows.append({"source": rec["source"], "rendered": tok.apply_chat_template(rec["messages"], tokenize=False)[:400]})
        if len(rows) >= n:
            break
    return pd.DataFrame(rows)


def training_table(stats: dict):
    """The first and last logged values of a phase (loss, token accuracy, DPO rewards)."""
    import pandas as pd

    m = stats.get("metrics") or {}
    keys = sorted({k.rsplit("_first", 1)[0] for k in m if k.endswith("_first")} |
                  {k.replace("_last", "") for k in m if k.endswith("_last")})
    rows = [{"metric": k.split("/", 1)[1], "first": m.get(f"{k}_first"),
             "last": m.get(f"{k}_last", m.get(k))} for k in keys]
    return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()


def effect_rows(results: dict) -> list[dict]:
    """One row per measured number, one column per model (base, sft, dpo)."""
    models = results["models"]
    rows: dict[str, dict] = {}

    def put(name, label, value):
        rows.setdefault(name, {"metric": name})[label] = value

    for label, res in models.items():
        for task, r in (res.get("benchmarks") or {}).items():
            key = next((k for k in ("acc", "exact_match", "pass@1") if k in r), None)
            if key:
                put(f"{task} ({key})", label, r[key])
        mt = res.get("mt_bench")
        if mt:
            put("MT-bench (1-10)", label, mt["score"])
            put("MT-bench turn 1", label, mt["turn_1"])
            put("MT-bench turn 2", label, mt["turn_2"])
            put("MT-bench unparsed grades", label, mt["unparsed"])
        pr = res.get("probes")
        if pr:
            put("ToxiGen safety score", label, pr["toxigen_mean"])
            for grade in ("pass", "fail", "did_not_understand", "unparsed"):
                put(f"adversarial prompts: {grade}", label, pr["probe_counts"].get(grade, 0))
    return list(rows.values())


def effect_table(results: dict):
    import pandas as pd

    rows = effect_rows(results)
    return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()


def effect_plot(results: dict, path: Optional[Path] = None):
    """Base vs SFT vs DPO: the benchmark numbers, MT-bench (/10) and the probe pass rate."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in effect_rows(results)
            if not r["metric"].startswith(("adversarial", "MT-bench unparsed", "MT-bench turn"))]
    labels = list(results["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 3.5))
    x = np.arange(len(rows))
    for i, label in enumerate(labels):
        vals = [(r.get(label) or 0) / (10 if r["metric"].startswith("MT-bench") else 1) for r in rows]
        ax.bar(x + (i - (len(labels) - 1) / 2) * 0.8 / len(labels), vals, 0.8 / len(labels), label=label)
    ax.set_xticks(x, [r["metric"].replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set_ylabel("score (MT-bench / 10)")
    ax.set_title("post-training: base vs SFT vs DPO")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        from phi_lib.io import save_figure

        save_figure(fig, path)
    return fig
