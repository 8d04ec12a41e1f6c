"""Stage 05 as notebook 05 runs it, one verb per cell (phi_lib.stage_base):

    stage = TrainStage(cfg, out)
    files = stage.prepare()        # provenance check (StaleArtifact before any work), DeepSpeed JSON
    result = stage.launch()        # writes the current train_config.yaml, trains in a subprocess
    stage.summarize()              # final losses, tokens/s, MFU; the selected checkpoint
    fig = stage.plots()            # training.png
    stage.memory_table()           # planner: GB per GPU under ZeRO 0-3
    stage.projection()             # planner: the full run's time and cost, planner.png
    manifest = stage.write_manifest()

Steps talk through files: `launch` through the checkpoints and `metrics.jsonl`, `summarize`
writes `selected.json` (phi_lib.trained) and its numbers to `.steps/summarize.json`, which
`projection` and `write_manifest` read. `summarize` refuses checkpoints that another config
made, so the manifest never carries a config that did not produce its numbers.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Optional

from phi_lib.provenance import MODEL_FILES, StaleArtifact, stale_message
from phi_lib.stage_base import BaseStage
from phi_lib.trained import write_selected
from phi_lib.train import checkpoint as ckpt
from phi_lib.train import launcher
from phi_lib.train.errors import TrainError
from phi_lib.train.fingerprint import blocking_changes, check_resume, phase_of
from phi_lib.train.phases import plan_phases


class TrainStage(BaseStage):
    """Stage 05: pretraining (and the phi-1 finetune) in a subprocess, its summary, the planner."""

    number = "05"

    def __init__(self, cfg, out: Optional[Path] = None):
        super().__init__(cfg, out)
        if cfg.train.init_from:  # a model read as data: its weights, config, tokenizer
            init = Path(cfg.train.init_from)
            files = [f for f in sorted(init.iterdir()) if f.is_file() and any(
                fnmatch(f.name, pat) for pat in MODEL_FILES)] if init.is_dir() else [init]
            self.inputs.update({f"init_from/{f.name}": f for f in files})

    # ------------------------------------------------------------------ steps
    def prepare(self) -> dict[str, Path]:
        """Stop before any work if the newest checkpoint was made with another config
        (StaleArtifact), check the finetune set, write the DeepSpeed JSON."""
        with self.timed() as t:
            _, state = check_resume(self.cfg, self.out)
            files = launcher.prepare(self.cfg, self.out)
        self.record("prepare", fingerprint=self.fingerprint, seconds=t["seconds"],
                    resumes_from=state["step"] if state else None)
        return files

    def launch(self, on_line: Optional[Callable[[str], None]] = print,
               live: bool = True) -> launcher.LaunchResult:
        """Train: the launcher as a subprocess (its log streamed to `on_line` and train.log,
        the curves redrawn when `live`), resuming from the newest checkpoint."""
        from phi_lib.train.plots import LivePlot

        if on_line is not None:
            on_line(" ".join(launcher.command(self.cfg, self.out)))
        tick = LivePlot(self.out / "metrics.jsonl") if live else None
        result = launcher.launch(self.cfg, self.out, on_line=on_line, on_tick=tick)
        self.record("launch", fingerprint=self.fingerprint, seconds=round(result.seconds, 2),
                    train_config_digest=result.config_digest, resumed_from=result.resumed_from,
                    command=" ".join(result.command))
        return result

    def summarize(self):
        """Final losses, tokens/s, MFU, and the selected checkpoint (`selected.json`), of a
        finished run whose checkpoints this config made; a table."""
        import pandas as pd

        from phi_lib.train.select import select
        from phi_lib.train.summary import summarize

        with self.timed() as t:
            latest, state = check_resume(self.cfg, self.out)  # StaleArtifact if another config's
            end = plan_phases(self.cfg, self.out)[-1].last_step
            if state is None or state["step"] != end:
                raise TrainError(f"training has not finished: the run ends at step {end}, the "
                                 f"newest checkpoint is {latest or 'none'}; run stage.launch()")
            summary = summarize(self.out)
            if summary["metrics"]["steps"] != end:
                raise TrainError(f"{self.out / 'metrics.jsonl'} ends at step "
                                 f"{summary['metrics']['steps']}, the checkpoints at {end}")
            selected = select(self.cfg, self.out)
            self._check_made_here(selected)
            write_selected(self.out, selected)
        metrics = dict(summary["metrics"], selected_step=selected["step"])
        if selected["value"] is not None:
            metrics[f"selected_{selected['select_by']}"] = selected["value"]
        self.record("summarize", fingerprint=self.fingerprint, metrics=metrics,
                    counts=summary["counts"], seconds=t["seconds"], selected=selected,
                    last_checkpoint=summary["last_checkpoint"])
        return pd.Series(metrics | summary["counts"]).to_frame("value")

    def _check_made_here(self, selected: dict) -> None:
        """The selected checkpoint (an older one than the newest, with a finetune) was made by
        this config too, or by one it continues."""
        path = self.out / selected["checkpoint"]
        state = ckpt.read_state(path)
        blocking = blocking_changes(state, self.cfg, phase_of(state, plan_phases(self.cfg, self.out)))
        if blocking:
            raise StaleArtifact(stale_message(f"checkpoint {path.name}", path.parent, blocking))

    def plots(self):
        """Train and validation loss, lr, throughput and the fp16 loss scale (training.png)."""
        from phi_lib.train.plots import plot_metrics

        fig = plot_metrics(self.out / "metrics.jsonl")
        self.save_figure(fig, "training.png")
        return fig

    def memory_table(self):
        """Planner: GB per GPU of phi-1.5 at sequence 2048 under ZeRO 0-3 (a table)."""
        from phi_lib.train.planner import memory_table

        return memory_table(self.cfg)

    def projection(self):
        """Planner: the full run's wall time and GPU-hours at the MFU measured here, MPT-1.3B's
        and the paper's implied one (a table; planner.png)."""
        from phi_lib.train.planner import plot_projection, projection

        mfu = ((self.step_stats("summarize") or {}).get("metrics") or {}).get("mfu")
        table = projection(self.cfg, mfu)
        self.save_figure(plot_projection(table, self.cfg), "planner.png")
        return table

    def write_manifest(self) -> dict:
        """The manifest: every step's numbers, the selected checkpoint, the digest of the
        config file the training processes read."""
        stats = self.step_stats("summarize")
        if stats is None or not self.step_current("summarize", self.fingerprint):
            raise TrainError("the summary is not this config's: run stage.summarize() first")
        launch = self.step_stats("launch") if self.step_current("launch", self.fingerprint) else None
        return super().write_manifest(
            selected=stats["selected"], last_checkpoint=stats["last_checkpoint"],
            train_config_digest=(launch or {}).get("train_config_digest"),
            resumed_from=(launch or {}).get("resumed_from"))
