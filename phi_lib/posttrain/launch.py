"""Start a TRL training phase (SFT or DPO) as a subprocess, as stage 05 starts its training.

    job = write_job(phase_dir, {...})     # what the program reads: model, data, TRL args, LoRA
    launch(cfg, phase_dir)                # single / accelerate / deepspeed; streams the log

`single` runs `python -m phi_lib.posttrain.train --job job.json`; `deepspeed` the DeepSpeed
launcher (`--num_gpus`, `--hostfile` for several nodes) with the ZeRO config written from the
params (`ds_config.json`); `accelerate` runs `accelerate launch` with a config file written
from the params (`accelerate.yaml`: DeepSpeed plugin pointing at the same ZeRO JSON, or plain
multi-GPU when `zero_stage` is 0). The HF Trainer inside TRL reads the ZeRO JSON, whose batch
and precision entries are `auto` so they follow the trainer's arguments.

The same pattern as phi_lib/train/launcher.py (a stage may not import another stage's
package); the DeepSpeed JSON differs, as TRL's Trainer fills in the `auto` values itself.
The child dies with its parent (Linux `PR_SET_PDEATHSIG`), so a killed notebook kernel or
runner leaves no training process behind; the next run resumes from the last checkpoint.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from phi_lib.io import atomic_write_json, atomic_write_text
from phi_lib.paths import project_root

JOB_FILE = "job.json"
LOG_FILE = "train.log"


class PosttrainError(RuntimeError):
    """A training phase failed; the message has the log tail."""


def ds_config(pc) -> dict:
    """ZeRO config for the HF Trainer (`auto` entries are filled from its arguments)."""
    zero: dict = {"stage": pc.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if pc.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def accelerate_config(pc, ds_path: Path) -> dict:
    """`accelerate launch --config_file` contents for this run."""
    cfg = {"compute_environment": "LOCAL_MACHINE", "num_machines": pc.num_nodes,
           "num_processes": pc.num_gpus * pc.num_nodes, "machine_rank": 0,
           "main_process_port": pc.master_port, "use_cpu": False}
    if pc.zero_stage:  # precision, accumulation and clipping then come from the ZeRO JSON only
        cfg.update(distributed_type="DEEPSPEED", deepspeed_config={
            "deepspeed_config_file": str(ds_path), "zero3_init_flag": pc.zero_stage == 3})
    else:
        cfg.update(distributed_type="MULTI_GPU",
                   mixed_precision={"fp32": "no"}.get(pc.precision, pc.precision))
    return cfg


def prepare(pc, phase_dir: Path, job: dict, params_dir: Optional[Path] = None) -> dict[str, Path]:
    """Write job.json (+ the ZeRO JSON and the accelerate config for multi-process launchers)."""
    phase_dir = Path(phase_dir)
    phase_dir.mkdir(parents=True, exist_ok=True)
    files = {"job": phase_dir / JOB_FILE}
    if pc.launcher != "single":
        files["deepspeed"] = phase_dir / "ds_config.json"
        atomic_write_json(files["deepspeed"], ds_config(pc))
        job = {**job, "deepspeed": str(files["deepspeed"]) if pc.zero_stage else None}
    if pc.launcher == "accelerate":
        files["accelerate"] = phase_dir / "accelerate.yaml"
        atomic_write_text(files["accelerate"], yaml.safe_dump(accelerate_config(pc, files["deepspeed"])))
    atomic_write_json(files["job"], job)
    return files


def command(pc, phase_dir: Path, hostfile: Optional[Path] = None) -> list[str]:
    """The launcher command line for `posttrain.launcher`."""
    prog = ["--job", str(Path(phase_dir) / JOB_FILE)]
    bin_dir = Path(sys.executable).parent
    if pc.launcher == "single":
        return [sys.executable, "-u", "-m", "phi_lib.posttrain.train", *prog]
    if pc.launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(bin_dir / "deepspeed")
        cmd = [exe, "--num_gpus", str(pc.num_gpus), "--master_port", str(pc.master_port)]
        if pc.num_nodes > 1:
            cmd += ["--num_nodes", str(pc.num_nodes), "--hostfile", str(hostfile)]
        return cmd + ["--module", "phi_lib.posttrain.train", *prog]
    exe = shutil.which("accelerate") or str(bin_dir / "accelerate")
    return [exe, "launch", "--config_file", str(Path(phase_dir) / "accelerate.yaml"),
            "-m", "phi_lib.posttrain.train", *prog]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(pc, phase_dir: Path, *, hostfile: Optional[Path] = None,
           on_line: Optional[Callable[[str], None]] = print) -> float:
    """Run a prepared phase, stream its output to `on_line` and `train.log`; the seconds it
    took, or `PosttrainError` with the log tail."""
    phase_dir = Path(phase_dir)
    cmd = command(pc, phase_dir, hostfile)
    env = dict(os.environ)
    root = str(project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0, tail = time.time(), []
    with open(phase_dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                preexec_fn=_die_with_parent)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail = (tail + [line.rstrip()])[-30:]
                if on_line is not None and not _noise(line):
                    on_line(line.rstrip())
            rc = proc.wait()
        except BaseException:  # an interrupted notebook stops its training too
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise PosttrainError(f"{phase_dir.name} training exited with code {rc} ({' '.join(cmd)}); "
                             f"log {phase_dir / LOG_FILE}. Tail:\n" + "\n".join(tail[-15:]))
    return time.time() - t0


def _noise(line: str) -> bool:
    """Progress-bar redraws and per-process banners (kept in train.log, not echoed)."""
    return ("real_accelerator.py" in line or "it/s]" in line or "s/it]" in line
            or "[INFO] [launch.py" in line)
