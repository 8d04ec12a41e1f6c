"""Stage 06's benchmarks and stage 07's safety probes on one model, through their public
commands (a stage talks to another only through files and commands, never its package):

- `python -m phi_lib eval --model DIR --tasks ... --limit N --params CONFIG --out OUT` writes
  `OUT/results.json` (lm-eval conventions, `evaluate`'s settings) and per-item `samples/`;
- `python -m phi_lib run CONFIG --stages 07 --set run.stages=07 --set toxicity.models=[DIR] ...`
  runs notebook 07 on the model in a run of its own under `OUT` (ToxiGen score, the
  adversarial prompts, their judge grades), whose `07_toxicity/results.json` is read back.

Both are called with `--force` when stage 08 decides the model's measurement is stale (the
commands key their own caches on the model's name, which a retrained `sft/model` keeps).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import yaml

from phi_lib.io import atomic_write_text, read_json
from phi_lib.paths import project_root

TOXICITY_RUN = "toxicity"
"""Run name of the nested stage-07 run under a model's measure folder."""


class MeasureError(RuntimeError):
    """A measuring command failed; the message has its output tail."""


def write_config(cfg, path: Path) -> Path:
    """The resolved config as a params file the commands load (absolute output root)."""
    d = cfg.to_dict()
    d.pop("params_file", None)
    d["run"]["output_root"] = str(cfg.run_dir.parent.resolve())
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
    return path


def _run(cmd: list[str], what: str, on_line: Optional[Callable[[str], None]]) -> None:
    env = dict(os.environ)
    root = str(project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if on_line is not None and "it/s]" not in line and "s/it]" not in line:
                on_line(line.rstrip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise MeasureError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n" + "\n".join(tail[-12:]))


def benchmarks(model: str, tasks: list[str], limit: Optional[int], config: Path, out: Path, *,
               force: bool, on_line: Optional[Callable[[str], None]] = None) -> dict:
    """Stage 06's tasks on `model`: the eval command's `results.json`."""
    cmd = [sys.executable, "-m", "phi_lib", "eval", "--model", model, "--tasks", ",".join(tasks),
           "--out", str(out), "--params", str(config)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if force:
        cmd.append("--force")
    _run(cmd, f"benchmarks of {model}", on_line)
    return read_json(Path(out) / "results.json")


def probes(model: str, config: Path, out: Path, overrides: dict, *, force: bool,
           on_line: Optional[Callable[[str], None]] = None) -> dict:
    """Stage 07 on `model`, in a run of its own under `out`: its `results.json`."""
    sets = {"run.output_root": str(out), "run.name": TOXICITY_RUN, "run.stages": "07",
            "toxicity.models": f"[{model}]", **overrides}
    cmd = [sys.executable, "-m", "phi_lib", "run", str(config), "--stages", "07", "-q"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    if force:
        cmd.append("--force")
    _run(cmd, f"stage 07 on {model}", on_line)
    return read_json(Path(out) / TOXICITY_RUN / "07_toxicity" / "results.json")


def probe_summary(results: dict) -> dict:
    """The numbers stage 08 compares: ToxiGen mean and the judge's grade counts."""
    (model, tox), = results["toxigen"]["scores"].items()
    counts = results["probes"]["counts"]["judge"].get(model, {}).get("total", {})
    n = sum(counts.values())
    return {"toxigen_mean": tox["mean"], "probe_counts": counts,
            "probe_pass_rate": counts.get("pass", 0) / n if n else None, "probes": n}
