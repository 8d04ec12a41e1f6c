"""The runner: execute the stage notebooks of a params file with papermill.

Each stage runs in a fresh kernel; its executed copy lands in
``outputs/<run>/<NN_stage>/executed.ipynb``. A stage whose last successful run had the same
config hash is skipped. A failing stage stops the run with the failing cell's error and the
path of the executed notebook. The run ends with a report (``report.md`` / ``report.html``).

Provenance (phi_lib.provenance): a stage is skipped only while its fingerprint (config,
data folder, upstream outputs, the data files it read) matches its done marker; a stale stage
reruns and its library code recomputes what is stale. A selected stage never reads a stale
upstream stage that this invocation does not also run: the run stops first, naming it.
`force` discards a stage's outputs (not its content-addressed request cache) before rerunning.
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
from phi_lib.config import ConfigError
from phi_lib.io import atomic_write_json, atomic_write_text
from phi_lib.stages import DONE_MARKER, STAGES, Stage

KEEP_ON_FORCE = (".cache",)
"""Entries of a stage folder that --force keeps: caches keyed by their full request."""


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
    """True if the stage finished before with the same fingerprint and unchanged inputs."""
    return stage.is_complete(cfg)


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
        _check_upstream(cfg, selected, force)
        for number in STAGES:
            stage = STAGES[number]
            if number not in selected:
                result.statuses.append(StageStatus(number, "not selected"))
                continue
            if not stage.built:
                log(f"[{stage.dirname}] not built yet: skipped")
                result.statuses.append(StageStatus(number, "not built"))
                continue
            reasons = stage.stale_reasons(cfg)
            if not force and not reasons:
                log(f"[{stage.dirname}] up to date (hash {stage.config_hash(cfg)}): skipped")
                result.statuses.append(StageStatus(number, "skipped"))
                continue
            why = "forced" if force else ", ".join(reasons[:6])
            log(f"[{stage.dirname}] running {stage.notebook.name} ({why}) ...")
            _own_folder(stage, cfg, discard=force)
            t0 = time.time()
            try:
                executed = _execute(stage, cfg, resolved, stream_outputs)
            except StageFailed as e:
                result.statuses.append(StageStatus(number, "failed", time.time() - t0, str(e)))
                raise
            seconds = time.time() - t0
            _mark_done(stage, cfg, seconds, executed)
            log(f"[{stage.dirname}] done in {seconds:.1f}s")
            result.statuses.append(StageStatus(number, "done", seconds))
    finally:
        if report:
            from phi_lib.report import write_report

            result.report = write_report(cfg, result.statuses)
            log(f"report: {result.report}")
    return result


def _check_upstream(cfg: Config, selected: list[str], force: bool) -> None:
    """Stop before any work if a selected stage would read a stale upstream stage that this
    invocation does not run (its numbers would not come from the config they claim)."""
    for number in selected:
        if not STAGES[number].built:
            continue
        for u in STAGES[number].upstream:
            up = STAGES[u]
            if u not in cfg.run.stages or u in selected or not up.built:
                continue
            reasons = up.stale_reasons(cfg)
            if reasons:
                raise ConfigError(
                    f"--stages: stage {STAGES[number].dirname} reads {up.dirname}, which is not "
                    f"current ({', '.join(reasons[:6])}): run it too (--stages {u},{number})")


def _own_folder(stage: Stage, cfg: Config, discard: bool) -> None:
    """Make the stage folder this run's own before executing into it: a folder a sweep linked
    to another variant's finished stage is unlinked (never written through), and `discard`
    (--force) removes what an earlier run left, but the request caches."""
    import shutil

    folder = stage.dir(cfg)
    if folder.is_symlink():
        folder.unlink()
    if folder.is_dir():
        (folder / DONE_MARKER).unlink(missing_ok=True)
        if discard:
            for entry in folder.iterdir():
                if entry.name in KEEP_ON_FORCE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def _mark_done(stage: Stage, cfg: Config, seconds: float, executed: Path) -> None:
    """Write the done marker: fingerprint, digest of the named outputs, data files read."""
    from phi_lib.io import read_json

    folder = stage.dir(cfg)
    manifest = folder / "manifest.json"
    data_inputs = (read_json(manifest).get("inputs") or {}) if manifest.is_file() else {}
    fp = stage.fingerprint(cfg)
    atomic_write_json(folder / DONE_MARKER, {
        "stage": stage.dirname, "config_hash": fp.key, "fingerprint": fp.to_dict(),
        "outputs_digest": stage.outputs_digest(folder), "data_inputs": data_inputs,
        "seconds": round(seconds, 1), "executed": str(executed),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _select(stages: Optional[list[str]], cfg: Config) -> list[str]:
    if not stages:
        return list(cfg.run.stages)
    out = []
    for s in stages:
        s = s.strip().zfill(2)
        if s not in STAGES:
            from phi_lib.config import _unknown

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
        if e.ename == "StaleArtifact":  # already one line naming the changed keys and ways out
            raise StageFailed(f"stage {stage.dirname}: {e.evalue}") from None
        last = (e.traceback or [""])[-1] if e.traceback else ""
        raise StageFailed(
            f"stage {stage.dirname} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"  executed notebook: {executed}\n  {_strip_ansi(last)}") from None
    return executed


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
