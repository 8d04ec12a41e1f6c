"""The runner: execute the stage notebooks of a params file with papermill.

Each stage runs in a fresh kernel; its executed copy lands in
``outputs/<run>/<NN_stage>/executed.ipynb``. A stage whose last successful run had the same
config hash is skipped. A failing stage stops the run with the failing cell's error and the
path of the executed notebook. The run ends with a report (``report.md`` / ``report.html``).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import yaml

from phi_lib.config import Config, load
from phi_lib.io import atomic_write_json, atomic_write_text, read_json
from phi_lib.stages import STAGES, Stage

DONE_MARKER = "stage.json"


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the cell's error and the executed notebook."""


@dataclass
class StageStatus:
    stage: str
    status: str
    """`done`, `skipped` (up to date), `failed`, `not built` or `not selected`."""
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RunResult:
    cfg: Config
    statuses: list[StageStatus] = field(default_factory=list)
    report: Optional[Path] = None


def is_complete(stage: Stage, cfg: Config) -> bool:
    """True if the stage finished before with the same config hash."""
    marker = stage.dir(cfg) / DONE_MARKER
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("config_hash") == stage.config_hash(cfg)
    except (ValueError, OSError):
        return False


def run(params: Union[str, Path, dict, Config], stages: Optional[list[str]] = None,
        overrides: Optional[dict] = None, force: bool = False,
        log: Callable[[str], None] = print, report: bool = True,
        stream_outputs: bool = True) -> RunResult:
    """Run the selected stages of a params file; raises StageFailed on the first failure.

    `stream_outputs` echoes each cell's output (e.g. stage 05's training log) to the terminal
    as it runs; without it only the stage lines are printed (the executed notebooks keep all)."""
    cfg = params if isinstance(params, Config) else load(params, overrides)
    selected = _select(stages, cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_dir / "config.yaml"
    atomic_write_text(resolved, yaml.safe_dump(_plain(cfg), sort_keys=False))
    log(f"run {cfg.run.name!r} -> {run_dir} (config hash {cfg.hash()})")

    result = RunResult(cfg)
    try:
        for number in STAGES:
            stage = STAGES[number]
            if number not in selected:
                result.statuses.append(StageStatus(number, "not selected"))
                continue
            if not stage.built:
                log(f"[{stage.dirname}] not built yet: skipped")
                result.statuses.append(StageStatus(number, "not built"))
                continue
            if not force and is_complete(stage, cfg):
                log(f"[{stage.dirname}] up to date (hash {stage.config_hash(cfg)}): skipped")
                result.statuses.append(StageStatus(number, "skipped"))
                continue
            log(f"[{stage.dirname}] running {stage.notebook.name} ...")
            t0 = time.time()
            try:
                executed = _execute(stage, cfg, resolved, stream_outputs)
            except StageFailed as e:
                result.statuses.append(StageStatus(number, "failed", time.time() - t0, str(e)))
                raise
            seconds = time.time() - t0
            atomic_write_json(stage.dir(cfg) / DONE_MARKER, {
                "stage": stage.dirname, "config_hash": stage.config_hash(cfg),
                "seconds": round(seconds, 1), "executed": str(executed),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            log(f"[{stage.dirname}] done in {seconds:.1f}s")
            result.statuses.append(StageStatus(number, "done", seconds))
    finally:
        if report:
            from phi_lib.report import write_report

            result.report = write_report(cfg, result.statuses)
            log(f"report: {result.report}")
    return result


def _select(stages: Optional[list[str]], cfg: Config) -> list[str]:
    if not stages:
        return list(cfg.run.stages)
    out = []
    for s in stages:
        s = s.strip().zfill(2)
        if s not in STAGES:
            from phi_lib.config import ConfigError, _unknown

            raise ConfigError(f"--stages: {_unknown(s, STAGES, 'stage')}")
        out.append(s)
    return out


def _plain(cfg: Config) -> dict:
    d = cfg.to_dict()
    d.pop("params_file", None)
    return d


def _execute(stage: Stage, cfg: Config, resolved: Path, stream_outputs: bool = True) -> Path:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_dir = stage.dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "executed.ipynb"
    logging.getLogger("papermill").setLevel(logging.INFO if stream_outputs else logging.WARNING)
    try:
        pm.execute_notebook(
            str(stage.notebook), str(executed),
            parameters={"params": str(resolved), "overrides": {}, "run_dir": str(cfg.run_dir)},
            kernel_name="python3", cwd=str(stage.notebook.parent),
            progress_bar=sys.stderr.isatty(), log_output=stream_outputs, request_save_on_cell_execute=True)
    except PapermillExecutionError as e:
        last = (e.traceback or [""])[-1] if e.traceback else ""
        raise StageFailed(
            f"stage {stage.dirname} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"  executed notebook: {executed}\n  {_strip_ansi(last)}") from None
    return executed


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
