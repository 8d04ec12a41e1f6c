"""Training curves from metrics.jsonl: loss (train and val), lr, tokens/s, loss scale."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from phi_lib.io import save_figure
from phi_lib.train.metrics import read_metrics


PANELS = (("loss", ("train_loss", "val_loss")), ("learning rate", ("lr",)),
          ("tokens/s", ("tokens_per_s",)), ("fp16 loss scale", ("loss_scale",)))


def plot_metrics(metrics: Union[str, Path, list[dict]], save: Optional[Union[str, Path]] = None,
                 fig=None):
    """A 2x2 figure of the curves (redrawn into `fig` when given, for live updates)."""
    import matplotlib.pyplot as plt

    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    if fig is None:
        fig = plt.figure(figsize=(11, 6.5))
    fig.clf()
    axes = fig.subplots(2, 2).ravel()
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if key == "val_loss" or len(pts) < 3 else None,
                        ms=4, label=key.replace("_", " "))
        if key == "loss_scale" and not any(r.get("loss_scale") for r in records):
            ax.text(0.5, 0.5, "no loss scaling\n(fp32/bf16)", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        elif key == "loss_scale":
            ax.set_yscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    phases = {}
    for r in records:
        phases.setdefault(r.get("phase"), r["step"])
    for name, first in list(phases.items())[1:]:
        for ax in axes:
            ax.axvline(first, color="gray", ls="--", lw=0.8)
            ax.text(first, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=8, color="gray")
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


class LivePlot:
    """Redraws the curves in place in a notebook while the launcher streams (`on_tick`)."""

    def __init__(self, metrics_path: Union[str, Path]):
        import matplotlib.pyplot as plt

        self.path = Path(metrics_path)
        self.fig = plt.figure(figsize=(11, 6.5))
        plt.close(self.fig)  # shown through the display handle only
        self.handle = None

    def __call__(self) -> None:
        records = read_metrics(self.path)
        if not records:
            return
        plot_metrics(records, fig=self.fig)
        try:
            from IPython.display import display

            if self.handle is None:
                self.handle = display(self.fig, display_id=True)
            else:
                self.handle.update(self.fig)
        except ImportError:
            pass
