"""Start training as a subprocess and stream its log (a notebook kernel does not scale).

    files = prepare(cfg, out)        # resolved config + DeepSpeed JSON (+ the finetune set's dir)
    result = launch(cfg, out)        # single process, `deepspeed` or `torchrun`; streams the log

`launch` first checks that the newest checkpoint was made by this config (else StaleArtifact,
before anything starts), then always writes the current config to `train_config.yaml`
(atomically) and hands the processes that exact file; its digest is in the result (and in
every checkpoint the processes save), so a stale file from an earlier config is never read.

`single` runs `python -m phi_lib.train`; `deepspeed` runs the DeepSpeed launcher (one node, or
several from a hostfile over ssh/pdsh); `torchrun` runs one node's processes (multi-node
torchrun is one command per node: `commands()` prints them). Every host of a hostfile is
checked before anything starts; a failed run raises `TrainError` with the clearest message
its ranks wrote and the last good checkpoint.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from phi_lib.config import Config
from phi_lib.io import atomic_write_text
from phi_lib.paths import project_root
from phi_lib.provenance import StaleArtifact, file_digest
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.deepspeed_config import write_ds_config
from phi_lib.train.errors import ERRORS_DIR, LaunchError, TrainError, read_errors

CONFIG_FILE = "train_config.yaml"
LOG_FILE = "train.log"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", socket.gethostname()}


@dataclass
class LaunchResult:
    returncode: int
    command: list[str]
    log: Path
    metrics: Path
    last_checkpoint: Optional[Path]
    seconds: float
    config_digest: str = ""
    """Digest of the `train_config.yaml` the processes read."""
    resumed_from: Optional[int] = None
    """Step of the checkpoint the run resumed from (None = a fresh start)."""


def prepare(cfg: Config, out: Path) -> dict[str, Path]:
    """Write what the launched processes read: the resolved config (absolute output root)
    and the DeepSpeed JSON; with a finetune, first check that stage 03 packed its set."""
    from phi_lib.train.phases import finetune_data
    from phi_lib.train.select import check_selectable

    ft = finetune_data(cfg) if cfg.train.finetune.enabled else None
    check_selectable(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": write_config(cfg, out)[0], "deepspeed": out / "ds_config.json"}
    write_ds_config(cfg.train, files["deepspeed"])
    if ft is not None:
        files["finetune_data"] = ft
    return files


def write_config(cfg: Config, out: Path) -> tuple[Path, str]:
    """`train_config.yaml`: the resolved config the processes load (absolute output root),
    written atomically; returns its path and content digest."""
    d = cfg.to_dict()
    d.pop("params_file", None)
    d["run"]["output_root"] = str(cfg.run_dir.parent.resolve())
    path = Path(out) / CONFIG_FILE
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
    return path, file_digest(path)


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """(host, slots) of a DeepSpeed hostfile (`host slots=N`, # comments)."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"train.hostfile: {path} not found")
    hosts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [p for p in parts[1:] if p.startswith("slots=")]
        try:
            hosts.append((parts[0], int(slots[0].split("=", 1)[1]) if slots else 1))
        except ValueError:
            raise LaunchError(f"{path}:{n}: expected `hostname slots=N`, got {line!r}") from None
    if not hosts:
        raise LaunchError(f"train.hostfile: {path} lists no hosts")
    return hosts


def check_hosts(hosts: list[tuple[str, int]], port: int = 22, timeout: float = 5.0) -> None:
    """Each non-local host must resolve and accept a TCP connection on `port` (ssh)."""
    for host, _ in hosts:
        if host in LOCAL_HOSTS:
            continue
        try:
            addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
        except socket.gaierror as e:
            raise LaunchError(f"host {host!r} of train.hostfile does not resolve ({e}); nothing "
                              "was started. Fix the hostfile or DNS.") from None
        try:
            with socket.create_connection(addr[:2], timeout=timeout):
                pass
        except OSError as e:
            raise LaunchError(f"host {host!r} of train.hostfile is unreachable on port {port} "
                              f"(ssh): {e}; nothing was started.") from None


def _hostfile(cfg: Config) -> Optional[Path]:
    if not cfg.train.hostfile:
        return None
    path = Path(cfg.train.hostfile)
    if not path.is_absolute() and cfg.params_file:
        path = Path(cfg.params_file).parent / path
    return path


def command(cfg: Config, out: Path) -> list[str]:
    """The launcher command line for `cfg.train.launcher`."""
    tc, out = cfg.train, Path(out)
    prog = ["--config", str(out / CONFIG_FILE), "--out", str(out)]
    if tc.launcher == "single":
        return [sys.executable, "-u", "-m", "phi_lib.train", *prog]
    if tc.launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        cmd = [exe, "--num_gpus", str(tc.num_gpus), "--master_port", str(tc.master_port)]
        if tc.num_nodes > 1:
            cmd += ["--num_nodes", str(tc.num_nodes), "--hostfile", str(_hostfile(cfg))]
        return cmd + ["--module", "phi_lib.train", *prog]
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return [exe, "--nproc_per_node", str(tc.num_gpus), "--nnodes", "1",
            "--master_port", str(tc.master_port), "-m", "phi_lib.train", *prog]


def commands(cfg: Config, out: Path) -> list[str]:
    """The command(s) to run by hand: one per node for multi-node torchrun."""
    tc = cfg.train
    if tc.launcher != "torchrun" or tc.num_nodes == 1:
        return [" ".join(command(cfg, out))]
    master = read_hostfile(_hostfile(cfg))[0][0]
    base = command(cfg, out)
    i = base.index("--nnodes")
    return [" ".join(base[:i] + ["--nnodes", str(tc.num_nodes), "--node_rank", str(r),
                                 "--master_addr", master] + base[i + 2:])
            for r in range(tc.num_nodes)]


DS_ENV_FILE = "deepspeed_env"
"""Multi-node deepspeed: the variables its runner does not pass to the other nodes by itself
(it exports only PYTHON*, MLFLOW*, UCX*, MV2* and the accelerator's, e.g. NCCL*)."""
_PASSED_ON = ("PHI_DATA", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")


def launch_env(cfg: Config, out: Path, write: bool = False) -> dict[str, str]:
    """The environment variables the launch sets over the caller's (the dry run prints them):
    the project on PYTHONPATH, unbuffered output, OMP threads per GPU process, and for a
    multi-node deepspeed run `DS_ENV_FILE` naming `<out>/deepspeed_env` (written when `write`),
    which carries those and the data folder / offline settings to every node."""
    tc, env = cfg.train, os.environ
    root = str(project_root())
    out_env = {"PYTHONPATH": root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1")}
    if tc.launcher != "single":
        out_env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS") or str(
            max(1, (os.cpu_count() or 1) // tc.num_gpus))
    if tc.launcher == "deepspeed" and tc.num_nodes > 1:
        remote = {"OMP_NUM_THREADS": out_env["OMP_NUM_THREADS"],
                  **{k: env[k] for k in _PASSED_ON if env.get(k)}}
        path = Path(out) / DS_ENV_FILE
        if write:
            atomic_write_text(path, "".join(f"{k}={v}\n" for k, v in remote.items()))
        out_env["DS_ENV_FILE"] = str(path)  # deepspeed joins it to ~ and .: absolute wins
    return out_env


def launch(cfg: Config, out: Path, on_line: Optional[Callable[[str], None]] = print,
           on_tick: Optional[Callable[[], None]] = None, tick_s: float = 5.0,
           echo_noise: bool = False) -> LaunchResult:
    """Run the launcher, stream its output to `on_line` and `train.log`, and raise
    `TrainError` if it fails (`StaleArtifact`, before anything starts, if the newest
    checkpoint was made with another config). `on_tick` is called every `tick_s` (live plots)."""
    from phi_lib.train.fingerprint import check_resume
    from phi_lib.train.select import check_selectable

    out = Path(out)
    tc = cfg.train
    if tc.launcher == "torchrun" and tc.num_nodes > 1:
        raise LaunchError("torchrun starts one node per command; run on each node:\n"
                          + "\n".join(commands(cfg, out)) + "\nor use train.launcher=deepspeed")
    if tc.num_nodes > 1:
        check_hosts(read_hostfile(_hostfile(cfg)))
    _, resume = check_resume(cfg, out)
    check_selectable(cfg)
    out.mkdir(parents=True, exist_ok=True)
    _, config_digest = write_config(cfg, out)  # always the current config, never a stale file
    shutil.rmtree(out / ERRORS_DIR, ignore_errors=True)
    cmd = command(cfg, out)
    env = {**os.environ, **launch_env(cfg, out, write=True)}
    root = str(project_root())
    t0 = time.time()
    log_path = out / LOG_FILE
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        tail: list[str] = []
        last_tick = time.time()
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail = (tail + [line.rstrip()])[-40:]
                if on_line is not None and (echo_noise or not _noise(line)):
                    on_line(line.rstrip())
                if on_tick is not None and time.time() - last_tick > tick_s:
                    on_tick()
                    last_tick = time.time()
            rc = proc.wait()
        except BaseException:  # interrupted notebook: stop the whole process group
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if on_tick is not None:
        on_tick()
    last = ckpt.latest(out / "checkpoints")
    result = LaunchResult(rc, cmd, log_path, out / "metrics.jsonl", last, time.time() - t0,
                          config_digest, resume["step"] if resume else None)
    if rc != 0:
        errors = read_errors(out)
        if errors and errors[0]["kind"] == "stale":
            raise StaleArtifact(errors[0]["message"])
        if errors:
            raise TrainError(errors[0]["message"])
        raise TrainError(f"training exited with code {rc} ({' '.join(cmd)}); last good "
                         f"checkpoint: {last or 'none'}. Log tail:\n" + "\n".join(tail[-15:]))
    return result


def _noise(line: str) -> bool:
    """DeepSpeed's per-process banner lines (kept in train.log, not echoed)."""
    return ("real_accelerator.py" in line or "[INFO] [launch.py" in line
            or "[INFO] [logging.py" in line or "comm.py:" in line)
