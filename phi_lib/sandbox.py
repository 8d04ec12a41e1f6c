"""Run untrusted (model-written) Python in a separate, limited process.

    from phi_lib.sandbox import run_program
    r = run_program(code, timeout_s=10, memory_mb=1024)
    r.status  # "passed" | "failed" | "timeout" | "error"

`run_program` never raises for anything the program does. Every program gets a fresh
process in a new session, a throwaway working directory, a minimal environment (nothing of
the caller's: no secrets), resource limits (CPU time, address space, file size, process
count, no core dumps), and afterwards every process it started is killed and its files are
removed. Stdout/stderr go to regular files so the file-size limit also caps them.

Guarantees depend on what the OS lets us do (:func:`isolation` says which are in effect):

* running as root on Linux (our CI and GPU boxes): the program runs under a fresh,
  otherwise unused uid. So it cannot signal the caller or other sandboxes, cannot write or
  delete anything the caller owns (only world-writable dirs such as /tmp, which we sweep
  for its files afterwards), the process-count limit is its own, and cleanup is exact: we
  kill every process of that uid (`kill -9 -1` run as that uid), which also catches
  double-forked, `setsid` daemons. It also gets its own network namespace (`unshare(2)`
  CLONE_NEWNET): no interface but a down loopback, so no network at all.
* otherwise (unprivileged): limits and a new session still apply; cleanup kills the
  session's processes (a daemon that calls setsid itself escapes, but keeps the CPU-time
  limit); network and signalling other processes are blocked by a Python audit hook,
  which stops Python code but not native code (ctypes) - use a container for hostile code.

In both modes an audit hook refuses socket creation, so a program sees a clear
``PermissionError`` rather than a hang.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

STATUSES = ("passed", "failed", "timeout", "error")
_UID_BASE, _UID_SPAN = 200_000, 1_000_000
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")

# Runs first in the child (as root when we are root), then hands over to the program.
_BOOTSTRAP = r"""
import os, sys, resource
cfg = eval(sys.argv[1])
for name, (soft, hard) in cfg["rlimits"].items():
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (ValueError, OSError):
        pass
mech = ["rlimits", "session", "tmpdir", "env"]
if cfg["uid"] is not None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    ok_fs = not cfg["need_fs"]
    if cfg["netns"] and libc.unshare(%(newnet)d) == 0:
        mech.append("netns")
    if libc.unshare(%(newns)d) == 0 and mount(None, b"/", None, %(rprivate)d, None) == 0:
        try:
            # fresh tmpfs over world-writable and caller-private dirs; bind back what we need
            for top, keep in cfg["overlays"].items():
                fds = [os.open(k, os.O_PATH) for k in keep]
                if mount(b"tmpfs", top.encode(), b"tmpfs", %(nosuid_nodev)d, b"mode=1777,size=64m") != 0:
                    raise OSError(ctypes.get_errno(), "tmpfs " + top)
                for k, fd in zip(keep, fds):
                    os.makedirs(k, mode=0o755, exist_ok=True)
                    if mount(f"/proc/self/fd/{fd}".encode(), k.encode(), None, %(rbind)d, None) != 0:
                        raise OSError(ctypes.get_errno(), "bind " + k)
                    os.close(fd)
            mech.append("mountns")
            ok_fs = True
        except OSError:
            pass
    if ok_fs:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        mech.append("uid")
    os.chdir(cfg["work"])
if cfg["nproc"]:
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
if cfg["audit"]:
    mech.append("audit")
os.write(cfg["mech_fd"], " ".join(mech).encode())
os.close(cfg["mech_fd"])
_pg = os.getpgid(0)

def _guard(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the sandbox")
    if event in ("os.kill", "os.killpg"):
        pid = args[0]
        if event == "os.killpg":
            ok = pid in (0, _pg)
        elif pid <= 0:
            ok = pid == 0 or -pid == _pg
        else:
            try:
                ok = os.getpgid(pid) == _pg
            except OSError:
                ok = False
        if not ok:
            raise PermissionError("signalling processes outside the sandbox is not allowed")

if cfg["audit"]:
    sys.addaudithook(_guard)
del cfg, mech
import runpy
sys.argv = ["program.py"]
runpy.run_path("program.py", run_name="__main__")
""" % {"newnet": 0x40000000, "newns": 0x00020000, "rprivate": (1 << 18) | 16384,
       "nosuid_nodev": 2 | 4, "rbind": 4096 | 16384}


def _overlays(work: Path) -> tuple[dict[str, list[str]], bool]:
    """Dirs to cover with a fresh tmpfs in the child's mount namespace, each with the paths
    to bind back: world-writable dirs (keeping only our work dir and the interpreter's own
    dirs, e.g. a venv under /tmp) and caller-private dirs
    that hold the interpreter (e.g. /root/.pyenv under a 0700 /root). Also whether the
    interpreter needs them to stay importable under another uid."""
    tops: dict[str, list[str]] = {d: [] for d in _WORLD_WRITABLE if os.path.isdir(d)}
    need_fs = False
    needed = {sys.base_prefix, sys.prefix, sys.exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))}
    needed |= {p for p in sys.path if p and os.path.isdir(p)}
    for path in sorted(needed):
        parts = Path(os.path.realpath(path)).parts
        for i in range(1, len(parts)):
            anc = str(Path(*parts[:i + 1]))
            if not os.stat(anc).st_mode & stat.S_IXOTH:
                tops.setdefault(anc, []).append(os.path.realpath(path))
                need_fs = True
                break
    for top in tops:
        # bind back our work dir, and the interpreter when it lives there (a venv under /tmp)
        for keep in [str(work)] + [os.path.realpath(p) for p in needed]:
            if keep.startswith(top.rstrip("/") + "/"):
                tops[top].append(keep)
    # keep the shortest paths only (a kept dir brings its subdirs)
    for top, keep in tops.items():
        keep = sorted(set(keep))
        tops[top] = [k for k in keep if not any(k != o and k.startswith(o + "/") for o in keep)]
    return tops, need_fs


@dataclass
class SandboxResult:
    """What a program did: status, captured output (truncated), and how it ended."""

    status: str
    """`passed` (exit 0), `failed` (non-zero exit: exception, assertion, MemoryError),
    `timeout` (wall-clock or CPU limit) or `error` (killed by a signal, or not started)."""
    stdout: str = ""
    stderr: str = ""
    returncode: Optional[int] = None
    """Exit code; negative = killed by that signal (Popen convention)."""
    duration_s: float = 0.0
    isolation: list[str] = field(default_factory=list)
    """Mechanisms in effect, e.g. ["uid", "netns", "rlimits", "session", "audit"]."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[str, ...]:
    """The mechanisms a sandboxed program gets here (probed once by running one)."""
    return tuple(run_program("pass", timeout_s=10).isolation)


def _privileged() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def _pick_uid() -> int:
    """A uid no process uses now (so limits, permissions and cleanup are this program's)."""
    used = {_proc_uid(p) for p in _pids()}
    while True:
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
        if uid not in used:
            return uid


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _proc_uid(pid: int) -> Optional[int]:
    """Real uid of a live (non-zombie) process; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    if "\nState:\tZ" in status:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _proc_sid(pid: int) -> Optional[int]:
    """Session id of a live (non-zombie) process; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat_ = f.read()
        fields = stat_[stat_.rindex(")") + 2:].split()  # fields after "(comm)"
        return None if fields[0] == "Z" else int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`, repeatedly, until none is left (fork bombs race us)."""
    for _ in range(50):
        if not any(_proc_uid(p) == uid for p in _pids()):
            return
        # kill(-1) as that uid reaches exactly the processes that uid may signal: its own
        subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={})
        time.sleep(0.02)


def _kill_session(sid: int) -> None:
    for _ in range(50):
        left = [p for p in _pids() if p != os.getpid() and _proc_sid(p) == sid]
        try:
            os.killpg(sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not left:
            return
        time.sleep(0.02)


def _sweep_files(uid: int) -> None:
    """Remove what the sandbox uid left in world-writable dirs."""
    for d in _WORLD_WRITABLE:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... output truncated]" if len(data) > limit else "")


def run_program(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, *,
                stdin: str = "", max_procs: int = 32, max_file_mb: int = 16,
                max_output_chars: int = 100_000, network: bool = False) -> SandboxResult:
    """Run `code` as `__main__` in a sandboxed Python process and report how it ended.

    `timeout_s` bounds wall-clock time (and CPU time, rounded up); `memory_mb` the address
    space; `max_procs` the processes/threads it may have; `max_file_mb` any file it writes,
    its stdout and stderr included. `network=True` keeps the caller's network (not for
    model-written code).
    """
    t0 = time.monotonic()
    privileged = _privileged()
    uid = _pick_uid() if privileged else None
    work = Path(tempfile.mkdtemp(prefix="phi-sandbox-"))
    io_dir = Path(tempfile.mkdtemp(prefix="phi-sandbox-io-"))  # caller-only: outputs
    proc = None
    mech: list[str] = []
    try:
        (work / "program.py").write_text(code, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(work / "program.py", uid, uid)
        cpu = max(1, int(timeout_s + 0.999))
        mem, fsize = memory_mb * 2**20, max_file_mb * 2**20
        overlays, need_fs = _overlays(work) if privileged else ({}, False)
        cfg = {"rlimits": {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (mem, mem),
                           "RLIMIT_FSIZE": (fsize, fsize), "RLIMIT_CORE": (0, 0),
                           "RLIMIT_NOFILE": (256, 256)},
               "uid": uid, "netns": not network, "overlays": overlays, "need_fs": need_fs,
               "work": str(work), "audit": not network, "mech_fd": -1,
               # NPROC counts per uid: exact for our fresh uid, approximate otherwise
               "nproc": max_procs if privileged else _user_procs() + max_procs}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
        mech_r, mech_w = os.pipe()
        cfg["mech_fd"] = mech_w
        with open(io_dir / "out", "wb") as out, open(io_dir / "err", "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-u", "-c", _BOOTSTRAP, repr(cfg)],
                    cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True, pass_fds=(mech_w,))
            except OSError as e:
                return SandboxResult("error", stderr=f"could not start: {e}",
                                     duration_s=time.monotonic() - t0)
            finally:
                os.close(mech_w)
            timed_out = False
            try:
                proc.communicate(stdin.encode("utf-8"), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            except OSError:  # the program closed its stdin early; wait for it normally
                try:
                    proc.wait(timeout=max(0.0, timeout_s - (time.monotonic() - t0)))
                except subprocess.TimeoutExpired:
                    timed_out = True
        _cleanup(proc.pid, uid)
        proc.wait()
        with os.fdopen(mech_r, "rb") as f:
            mech = f.read().decode().split()
        rc = proc.returncode
        stdout = _read_capped(io_dir / "out", max_output_chars)
        stderr = _read_capped(io_dir / "err", max_output_chars)
        elapsed = time.monotonic() - t0
        if timed_out or rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and elapsed >= cpu):
            status = "timeout"
        elif rc == 0:
            status = "passed"
        elif rc is not None and rc > 0:
            status = "failed"
        else:
            status = "error"
        return SandboxResult(status, stdout, stderr, rc, elapsed, mech)
    except Exception as e:  # noqa: BLE001 - a sandbox failure is a result, never a raise
        if proc is not None:
            _cleanup(proc.pid, uid)
        return SandboxResult("error", stderr=f"sandbox error: {type(e).__name__}: {e}",
                             duration_s=time.monotonic() - t0, isolation=mech)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(io_dir, ignore_errors=True)
        if uid is not None:
            _sweep_files(uid)


def _cleanup(pid: int, uid: Optional[int]) -> None:
    """Kill the program and everything it started."""
    if uid is not None:
        _kill_uid(uid)
    _kill_session(pid)  # the child is its session's leader: sid == its pid


def _user_procs() -> int:
    me = os.getuid()
    return sum(1 for p in _pids() if _proc_uid(p) == me)


def run_programs(codes: Sequence[str], timeout_s: float = 10.0, memory_mb: int = 1024, *,
                 workers: Optional[int] = None, progress: bool = False,
                 **kwargs) -> list[SandboxResult]:
    """`run_program` over many programs in parallel threads (each its own process), in order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    results: list[Optional[SandboxResult]] = [None] * len(codes)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futs = {pool.submit(run_program, c, timeout_s, memory_mb, **kwargs): i
                for i, c in enumerate(codes)}
        it = concurrent.futures.as_completed(futs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(futs), desc="sandbox")
        for fut in it:
            results[futs[fut]] = fut.result()
    return results  # type: ignore[return-value]
