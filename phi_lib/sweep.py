"""Ablations: a base params file plus named variants, each run as its own run, compared.

A sweep file::

    base: ../smoke.yaml          # relative to the sweep file
    overrides: {train.max_steps: 100}   # optional: dotted overrides every variant shares
    stages: ["03", "04", "05"]   # optional: the stages each variant runs
    metrics: ["05_train/final_val_loss"]   # optional: what the plot shows
    seeds: [0, 1]                # optional: each variant once per `train.seed` (init, data order)
    variants:
      synthetic_only: {"mix.sources": {...}}
      web_only:       {"mix.sources": {...}}

writes ``outputs/sweeps/<sweep name>/{results.csv, results.md, results.png}``. With `seeds`,
each (variant, seed) is its own run (`<sweep>-<variant>-s<seed>`; stages 01-04 do not read
`train.seed`, so the seeds of a variant share them), results.md shows mean +/- standard error
over seeds with their number, and for every pair of variants a paired test per benchmark
over the same items (seeds pooled, `evaluate.significance`) says whether the difference
clears the noise; results.png has error bars.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from phi_lib.config import ConfigError, load
from phi_lib.evaluate.significance import (common_items, in_words, item_matrix,
                                           paired_difference, seed_summary)
from phi_lib.io import atomic_write_text, save_figure
from phi_lib.report import collect_metrics
from phi_lib.run import run
from phi_lib.stages import STAGES

SWEEP_KEYS = ("base", "overrides", "stages", "metrics", "seeds", "variants")


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
    if not isinstance(spec.get("overrides") or {}, dict):
        raise ConfigError(f"{path}: overrides: expected a mapping of dotted overrides")
    seeds = spec.get("seeds")
    if seeds is not None:
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
            raise ConfigError(f"{path}: seeds: expected a list of distinct integers, got {seeds!r}")
    for name, over in spec["variants"].items():
        if not isinstance(over, dict):
            raise ConfigError(f"variants.{name}: expected a mapping of dotted overrides")
        if seeds is not None and "train.seed" in over:
            raise ConfigError(f"variants.{name}: train.seed is set by the sweep's `seeds`")
        try:
            load(spec["base"], _variant_overrides(spec, name, (seeds or [None])[0]))
        except ConfigError as e:
            raise ConfigError(f"variants.{name}: {e}") from None
    return spec


def _variant_overrides(spec: dict, name: str, seed: Optional[int] = None) -> dict:
    over = {**(spec.get("overrides") or {}), **(spec["variants"][name] or {})}
    over["run.name"] = f"{spec['name']}-{name}"
    if seed is not None:
        over["run.name"] += f"-s{seed}"
        over["train.seed"] = seed
    return over


def sweep(path: Path, force: bool = False, log: Callable[[str], None] = print,
          out_root: Optional[Path] = None, stream_outputs: bool = True,
          share_from: Sequence[Path] = ()) -> Path:
    """Run every variant (once per seed), then write the side-by-side table and plot; returns
    the table path.

    A stage whose resolved config (its sections and everything upstream, i.e. its hash) is
    the same as in an earlier variant is not run again: the variant's stage folder links to
    the finished one. A mixture ablation thus synthesizes and filters once. `share_from`: run
    folders made from the same base (e.g. a finished smoke run) whose current stages may be
    linked the same way. `force` reruns all.
    """
    spec = load_sweep(path)
    rows: dict[str, dict] = {}
    runs: dict[str, list[Path]] = {}
    finished: dict[tuple[str, str], Path] = {}
    for folder in share_from:
        _add_finished(load(spec["base"], {**(spec.get("overrides") or {}),
                                          "run.name": Path(folder).name,
                                          "run.output_root": str(Path(folder).parent)}), finished)
    for name in spec["variants"]:
        for seed in spec.get("seeds") or [None]:
            log(f"=== variant {name}" + (f" seed {seed}" if seed is not None else ""))
            cfg = load(spec["base"], _variant_overrides(spec, name, seed))
            if force:  # every stage reruns in the variant's own folder, not through a shared link
                for stage in STAGES.values():
                    if stage.dir(cfg).is_symlink():
                        stage.dir(cfg).unlink()
            else:
                _share_finished_stages(cfg, finished, log)
            res = run(cfg, stages=spec.get("stages"), force=force, log=log,
                      stream_outputs=stream_outputs)
            _add_finished(res.cfg, finished)
            rows[res.cfg.run.name] = {"variant": name, "seed": seed,
                                      **collect_metrics(res.cfg.run_dir)}
            runs.setdefault(name, []).append(res.cfg.run_dir)
            out_root = out_root or res.cfg.run_dir.parent / "sweeps"
    return write_comparison(rows, out_root / spec["name"], spec.get("metrics"), runs=runs)


def plan(path: Path) -> list[dict]:
    """A dry run: every (variant, seed) run the sweep would make, with each selected stage's
    hash and the earlier run whose stage it would share (same hash), without running any."""
    spec = load_sweep(path)
    seen: dict[tuple[str, str], str] = {}
    out = []
    for name in spec["variants"]:
        for seed in spec.get("seeds") or [None]:
            cfg = load(spec["base"], _variant_overrides(spec, name, seed))
            stages = {}
            for number in spec.get("stages") or cfg.run.stages:
                key = (number, STAGES[number].config_hash(cfg))
                stages[number] = {"hash": key[1], "shared_with": seen.get(key)}
                seen.setdefault(key, cfg.run.name)
            out.append({"run": cfg.run.name, "variant": name, "seed": seed, "stages": stages,
                        "train_steps": cfg.train.max_steps, "tokens": cfg.mix.total_tokens})
    return out


def _add_finished(cfg, finished: dict[tuple[str, str], Path]) -> None:
    """Record the run's current stages as shareable by their hash (the first one kept)."""
    for number, stage in STAGES.items():
        if stage.dir(cfg).is_dir() and stage.is_complete(cfg):
            finished.setdefault((number, stage.config_hash(cfg)), stage.dir(cfg))


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


def write_comparison(rows: dict[str, dict], out_dir: Path, metrics: Optional[list[str]] = None,
                     runs: Optional[dict[str, list[Path]]] = None) -> Path:
    """results.csv (one row per run), results.md (per variant: the value, or mean +/- standard
    error over seeds and their number; then the paired tests), results.png (error bars).

    `rows`: run name -> metrics, with `variant` and `seed` keys when the sweep has seeds
    (a plain `{variant: metrics}` is one run per variant). `runs`: variant -> its run folders,
    for the per-item paired tests on stage 06's samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    per_run = pd.DataFrame.from_dict(rows, orient="index")
    seeded = "seed" in per_run.columns and per_run["seed"].notna().any()
    if seeded:
        per_run.index.name = "run"
        values = per_run.drop(columns=["variant", "seed"])
        atomic_write_text(out_dir / "results.csv", per_run[["variant", "seed"] + sorted(
            values.columns)].to_csv())
        groups = values.groupby(per_run["variant"], sort=False)
        mean = groups.agg(lambda x: seed_summary(list(x))[0]).sort_index(axis=1)
        se = groups.agg(lambda x: seed_summary(list(x))[1]).sort_index(axis=1)
        n = groups.agg(lambda x: seed_summary(list(x))[2]).sort_index(axis=1)
    else:
        mean = per_run.drop(columns=[c for c in ("variant", "seed") if c in per_run.columns])
        if "variant" in per_run.columns:
            mean.index = per_run["variant"]
        mean = mean.sort_index(axis=1)
        mean.index.name = "variant"
        atomic_write_text(out_dir / "results.csv", mean.to_csv())
        se, n = None, None
    mean.index.name = "variant"
    if se is not None:  # a task's own stderr over items: the seeds' spread replaces it here
        keep = [c for c in mean.columns if not c.endswith("_stderr")]
        mean, se, n = mean[keep], se[keep], n[keep]
    # what an ablation changed is what a reader looks for: named metrics, then those that
    # differ between variants; the ones every variant shares (e.g. a shared stage) last
    differ = [c for c in mean.columns if mean[c].nunique(dropna=False) > 1]
    first = [m for m in (metrics or []) if m in mean.columns]
    ordered = first + [c for c in differ if c not in first]
    same = [c for c in mean.columns if c not in ordered]
    shown_table = mean if se is None else _with_errors(mean, se, n)
    head = "## Metrics that differ between variants" + (" (named ones first)" if first else "")
    if se is not None:
        head += f" (mean ± standard error over seeds, n = seeds)"
    md = [head, "", shown_table[ordered].T.to_markdown() if ordered else "(none)", ""]
    if same:
        md += ["## The same in every variant", "", shown_table[same].T.to_markdown(), ""]
    if runs:
        md += curve_section(runs, out_dir)
    if runs and len(runs) > 1:
        md += paired_section(runs)
    atomic_write_text(out_dir / "results.md", "\n".join(md))
    shown = [m for m in (metrics or differ) if m in mean.columns][:12]
    missing = [m for m in (metrics or []) if m not in mean.columns]
    if missing:
        print(f"sweep: metrics not produced by any variant: {', '.join(missing)}")
    if shown:
        cols = min(3, len(shown))
        rows_n = (len(shown) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
        for ax, metric in zip(axes.flat, shown):
            err = None if se is None else se[metric].fillna(0.0)
            mean[metric].plot.bar(ax=ax, color="C0", yerr=err, capsize=4)
            ax.set_title(metric + ("" if se is None else " (± s.e., seeds)"), fontsize=9)
            ax.set_xlabel("")
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        save_figure(fig, out_dir / "results.png", dpi=110)
        plt.close(fig)
    return out_dir / "results.csv"


def _with_errors(mean, se, n):
    """`0.512 ± 0.011 (n=2)` cells (one seed: the value and n=1)."""
    import pandas as pd

    def cell(m, s, k):
        if pd.isna(m):
            return ""
        return f"{m:.4g} (n={int(k)})" if pd.isna(s) else f"{m:.4g} ± {s:.2g} (n={int(k)})"

    return pd.DataFrame({c: [cell(mean.at[v, c], se.at[v, c], n.at[v, c]) for v in mean.index]
                         for c in mean.columns}, index=mean.index)


def paired_section(runs: dict[str, list[Path]]) -> list[str]:
    """results.md lines: for every pair of variants and every benchmark metric their stage-06
    samples share, the paired difference over the same items (seeds pooled) in words."""
    from itertools import combinations

    from phi_lib.evaluate.harness import HEADLINE
    from phi_lib.evaluate.prompts import MC_METRICS

    evals = {v: [Path(d) / STAGES["06"].dirname for d in dirs] for v, dirs in runs.items()}
    tasks = sorted({p.stem for dirs in evals.values() for d in dirs
                    for p in (d / "samples").glob("*.jsonl")})
    lines = []
    for a, b in combinations(list(evals), 2):
        for task in tasks:
            for metric in MC_METRICS.get(task, (HEADLINE.get(task, "acc"),)):
                items = common_items(evals[a], evals[b], task=task, metric=metric)
                if not items:
                    continue
                res = paired_difference(item_matrix(evals[a], task, metric, items),
                                        item_matrix(evals[b], task, metric, items))
                lines.append(f"- {in_words(a, b, f'{task}/{metric}', res)}")
    if not lines:
        return []
    return ["## Paired tests between variants (same items, seeds pooled, bootstrap)", "",
            "A difference is called real only when its 95% interval clears 0; at small scale "
            "most are within noise.", ""] + lines + [""]


def curve_section(runs: dict[str, list[Path]], out_dir: Path) -> list[str]:
    """results.md lines and curves.png: per task and variant, the learning curve's
    monotonicity and signal-to-noise over seeds (which tasks give signal at this scale)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from phi_lib.evaluate.curves import curve_matrix, read_curve, signal_table

    curves = {v: [read_curve(Path(d) / STAGES["06"].dirname) for d in dirs]
              for v, dirs in runs.items()}
    curves = {v: c for v, c in curves.items() if any(c)}
    if not curves:
        return []
    rows = [{"variant": v, **r} for v, cs in curves.items() for r in signal_table(cs)]
    if not rows:
        return []
    df = pd.DataFrame(rows).set_index(["task", "variant"]).sort_index()
    tasks = sorted({r["task"] for r in rows})
    cols = min(3, len(tasks))
    fig, axes = plt.subplots((len(tasks) + cols - 1) // cols, cols,
                             figsize=(4.5 * cols, 3.0 * ((len(tasks) + cols - 1) // cols)),
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for i, (v, cs) in enumerate(curves.items()):
            got = curve_matrix(cs, task)
            if got is None:
                continue
            steps, m, metric = got
            mu = m.mean(axis=0)
            ax.plot(steps, mu, marker="o", color=f"C{i}", label=v)
            if m.shape[0] > 1:
                sd = m.std(axis=0, ddof=1)
                ax.fill_between(steps, mu - sd, mu + sd, color=f"C{i}", alpha=0.2)
        ax.set_title(f"{task} ({metric})", fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, out_dir / "curves.png", dpi=110)
    plt.close(fig)
    good = sorted({r["task"] for r in rows if r["signal"]})
    return ["## Learning curves: which tasks give signal at this scale", "",
            "Monotonicity: Spearman of score with step, mean over seeds; SNR: spread of the "
            "seed-mean across checkpoints / spread across seeds (nan with one seed). A task "
            "gives signal with monotonicity >= 0.5 and SNR >= 2. Read the winner on those.", "",
            df.to_markdown(floatfmt=".3g"), "", "![curves](curves.png)", "",
            f"Tasks with signal: {', '.join(good) if good else 'none at this scale'}.", ""]
