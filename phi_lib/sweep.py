"""Ablations: a base params file plus named variants, each run as its own run, compared.

A sweep file::

    base: ../smoke.yaml          # relative to the sweep file
    stages: ["03", "04", "05"]   # optional: the stages each variant runs
    metrics: ["05_train/final_val_loss"]   # optional: what the plot shows
    variants:
      synthetic_only: {"mix.sources": {...}}
      web_only:       {"mix.sources": {...}}

writes ``outputs/sweeps/<sweep name>/{results.csv, results.md, results.png}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import yaml

from phi_lib.config import ConfigError, load
from phi_lib.io import atomic_write_text, save_figure
from phi_lib.report import collect_metrics
from phi_lib.run import run
from phi_lib.stages import STAGES

SWEEP_KEYS = ("base", "stages", "metrics", "variants")


def load_sweep(path: Path) -> dict:
    """Read and validate a sweep file: every variant's config is loaded before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in spec:
        if key not in SWEEP_KEYS:
            from phi_lib.config import _unknown

            raise ConfigError(f"{path}: {_unknown(key, SWEEP_KEYS, 'key')}")
    if "base" not in spec or not spec.get("variants"):
        raise ConfigError(f"{path}: a sweep needs `base` and at least one entry in `variants`")
    spec["base"] = (path.parent / spec["base"]).resolve()
    spec["name"] = path.stem
    for name, over in spec["variants"].items():
        if not isinstance(over, dict):
            raise ConfigError(f"variants.{name}: expected a mapping of dotted overrides")
        try:
            load(spec["base"], _variant_overrides(spec, name))
        except ConfigError as e:
            raise ConfigError(f"variants.{name}: {e}") from None
    return spec


def _variant_overrides(spec: dict, name: str) -> dict:
    over = dict(spec["variants"][name] or {})
    over["run.name"] = f"{spec['name']}-{name}"
    return over


def sweep(path: Path, force: bool = False, log: Callable[[str], None] = print,
          out_root: Optional[Path] = None, stream_outputs: bool = True) -> Path:
    """Run every variant, then write the side-by-side table and plot; returns the table path.

    A stage whose resolved config (its sections and everything upstream, i.e. its hash) is
    the same as in an earlier variant is not run again: the variant's stage folder links to
    the finished one. A mixture ablation thus synthesizes and filters once. `force` reruns all.
    """
    spec = load_sweep(path)
    rows: dict[str, dict] = {}
    finished: dict[tuple[str, str], Path] = {}
    for name in spec["variants"]:
        log(f"=== variant {name}")
        cfg = load(spec["base"], _variant_overrides(spec, name))
        if force:  # every stage reruns in the variant's own folder, not through a shared link
            for stage in STAGES.values():
                if stage.dir(cfg).is_symlink():
                    stage.dir(cfg).unlink()
        else:
            _share_finished_stages(cfg, finished, log)
        res = run(cfg, stages=spec.get("stages"), force=force, log=log,
                  stream_outputs=stream_outputs)
        for number, stage in STAGES.items():
            if stage.is_complete(res.cfg):
                finished.setdefault((number, stage.config_hash(res.cfg)), stage.dir(res.cfg))
        rows[name] = collect_metrics(res.cfg.run_dir)
        out_root = out_root or res.cfg.run_dir.parent / "sweeps"
    return write_comparison(rows, out_root / spec["name"], spec.get("metrics"))


def _share_finished_stages(cfg, finished: dict[tuple[str, str], Path],
                           log: Callable[[str], None]) -> None:
    """Link this variant's stage folders to earlier variants' finished ones with the same hash."""
    for number, stage in STAGES.items():
        source = finished.get((number, stage.config_hash(cfg)))
        target = stage.dir(cfg)
        if source is None or target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve(), target_is_directory=True)
        log(f"[{stage.dirname}] same config as {source.parent.name}: shared, not rerun")


def write_comparison(rows: dict[str, dict[str, float]], out_dir: Path,
                     metrics: Optional[list[str]] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)
    table.index.name = "variant"
    atomic_write_text(out_dir / "results.csv", table.to_csv())
    # what an ablation changed is what a reader looks for: named metrics, then those that
    # differ between variants; the ones every variant shares (e.g. a shared stage) last
    differ = [c for c in table.columns if table[c].nunique(dropna=False) > 1]
    first = [m for m in (metrics or []) if m in table.columns]
    ordered = first + [c for c in differ if c not in first]
    same = [c for c in table.columns if c not in ordered]
    md = ["## Metrics that differ between variants" + (" (named ones first)" if first else ""),
          "", table[ordered].T.to_markdown() if ordered else "(none)", ""]
    if same:
        md += ["## The same in every variant", "", table[same].T.to_markdown(), ""]
    atomic_write_text(out_dir / "results.md", "\n".join(md))
    shown = [m for m in (metrics or differ) if m in table.columns][:12]
    missing = [m for m in (metrics or []) if m not in table.columns]
    if missing:
        print(f"sweep: metrics not produced by any variant: {', '.join(missing)}")
    if shown:
        cols = min(3, len(shown))
        rows_n = (len(shown) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
        for ax, metric in zip(axes.flat, shown):
            table[metric].plot.bar(ax=ax, color="C0")
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("")
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        save_figure(fig, out_dir / "results.png", dpi=110)
        plt.close(fig)
    return out_dir / "results.csv"

