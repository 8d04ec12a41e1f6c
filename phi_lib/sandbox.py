"""Run untrusted (model-written) Python in a separate, limited process, behind the walls of
an isolation level asked for by name; never silently behind fewer.

    from phi_lib.sandbox import run_program
    r = run_program(code, timeout_s=10, memory_mb=1024)  # isolation="strict", the default
    r.status     # "passed" | "failed" | "timeout" | "error"
    r.isolation  # the walls it ran behind, e.g. ["net", "pid", "fs", "uid", "limits", "audit"]

`run_program` never raises for anything the program does. It raises
:class:`SandboxUnavailable` *before running any code* when this machine cannot build the walls
of the level asked for (the message names the config key, the level asked and the strongest
level obtainable); a weaker level runs only when asked for by name. Which walls a program got
is checked inside the sandboxed process itself (its namespaces against the caller's, its uid
seen from outside, its root dir), not assumed from what was requested: a missing wall stops
that program before its code runs. :func:`isolation_report` is what a stage's manifest records.

Walls. Each is a kernel mechanism, so it also holds for native code and for every process the
program starts (a shell, `curl`, a second Python), except `audit`:

* ``net``: its own network namespace whose only interface is its own loopback: no network at
  all, the caller's localhost included.
* ``pid``: its own pid namespace: it sees and can signal no process outside it.
* ``fs``: its own filesystem view. Read-only: /usr, /bin, /sbin, /lib* (bound or, merged-usr,
  symlinked), /etc/ld.so.cache, /etc/alternatives, the interpreter's prefixes (base install,
  venv; also where they live under /tmp or a 0700 home). Fresh: a 64 MiB tmpfs /tmp and
  /dev/shm, a minimal /dev, its own /proc. Writable host dir: only its throwaway work dir
  (cwd, HOME, TMPDIR). None of the caller's other files (project, data, home, /etc) exist there.
* ``uid``: it runs under a fresh, otherwise unused uid (only when the caller is root): it
  cannot read caller-private files, write or delete anything the caller owns, or signal any
  process but its own; its process-count limit is its own and cleanup is exact (every process
  of that uid is killed, double-forked `setsid` daemons included).
* ``limits``: every rlimit applied: CPU time, address space, file size (its stdout/stderr
  too), 256 open files, process count, no core dumps.
* ``audit`` (not a wall against native code or child processes): a Python audit hook that
  refuses sockets and signals to processes outside its process group, so Python code gets a
  clear ``PermissionError`` instead of a hang. Off with ``network=True``.

Always, at every level: a new session, `no_new_privs` (setuid programs such as `su` gain
nothing), a minimal environment (none of the caller's variables: no secrets), a throwaway
working dir, and afterwards every process it started is killed and its files are removed
(only under `weak` without root does a daemon that calls `setsid` itself escape the cleanup;
it keeps its CPU-time limit).

Levels (`isolation=`; the config keys `synth.sandbox_isolation`, `evaluate.sandbox_isolation`):

* ``strict`` (default): ``net``, ``pid``, ``fs``, ``limits`` guaranteed; plus ``uid`` where
  the caller is root (our CI and GPU boxes) and ``audit``. Backend: bubblewrap (`bwrap`,
  Debian/Ubuntu package `bubblewrap`) with new ipc, pid, net, uts, cgroup namespaces and
  `--die-with-parent`. An unprivileged caller gets `--unshare-all` (a user namespace maps the
  program to the caller's uid, files outside its view stay unreachable); a root caller runs
  bwrap without a user namespace and the program drops to a fresh uid inside it (a user
  namespace would map the program to real root). Needs bwrap on PATH and namespaces allowed
  (Docker's default seccomp profile refuses them, `standard`'s `unshare` too: there only
  `weak` runs, named, unless the container allows namespaces).
* ``standard``: ``net``, ``uid``, ``limits`` guaranteed; plus ``audit``. Backend: this module
  alone (no bwrap): the program `unshare(2)`s a network and a mount namespace, covers /tmp,
  /var/tmp, /dev/shm and caller-private dirs holding the interpreter with a fresh tmpfs, and
  drops to a fresh uid. Needs root and `unshare`. It sees the host's world-readable files and
  process list (it cannot write or signal them).
* ``weak``: ``limits`` guaranteed; plus ``audit``, and whatever else the `standard` backend
  gets here. Without root the program runs as the caller's uid: a child process or native code
  reaches the network and can write and delete the caller's files. Only for trusted code, or
  inside a container that is itself the wall.

``network=True`` (not for model-written code) keeps the caller's network: ``net`` and
``audit`` are then not asked for.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
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
_TMPFS_BYTES = 64 * 2**20
_REFUSED = 125  # exit code of a bootstrap that found a wall missing (the program never ran)


@dataclass(frozen=True)
class Level:
    """An isolation level: the backend that builds it and the walls it guarantees."""

    backend: str
    """`bwrap` (bubblewrap) or `fallback` (this module's own namespaces and uid drop)."""
    walls: tuple[str, ...]
    """Walls a program must get, or nothing runs (see the module docstring)."""


LEVELS = {"strict": Level("bwrap", ("net", "pid", "fs", "limits")),
          "standard": Level("fallback", ("net", "uid", "limits")),
          "weak": Level("fallback", ("limits",))}
"""Isolation levels by name, strongest first."""
DEFAULT_LEVEL = "strict"


class SandboxUnavailable(RuntimeError):
    """The isolation asked for cannot be built here; raised before the program runs."""


# Runs first in the child (as root when we are root), then hands over to the program.
_BOOTSTRAP = r"""
import os, sys, json, resource
cfg = eval(sys.argv[1])
walls, notes, limits = [], [], True
for name, (soft, hard) in cfg["rlimits"].items():
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (ValueError, OSError) as e:
        limits = False
        notes.append(f"setrlimit({name}): {e}")
if sys.platform.startswith("linux"):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(%(no_new_privs)d, 1, 0, 0, 0)
if cfg["uid"] is not None:
    ok_fs = cfg["backend"] == "bwrap" or not cfg["need_fs"]
    if cfg["backend"] == "fallback":
        mount = libc.mount
        mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        if cfg["netns"] and libc.unshare(%(newnet)d) != 0:
            notes.append("unshare(CLONE_NEWNET): " + os.strerror(ctypes.get_errno()))
        if libc.unshare(%(newns)d) == 0 and mount(None, b"/", None, %(rprivate)d, None) == 0:
            try:
                # fresh tmpfs over world-writable and caller-private dirs; bind back what we need
                for top, keep in cfg["overlays"].items():
                    fds = [os.open(k, os.O_PATH) for k in keep]
                    if mount(b"tmpfs", top.encode(), b"tmpfs", %(nosuid_nodev)d,
                             b"mode=1777,size=%(tmpfs)d") != 0:
                        raise OSError(ctypes.get_errno(), "tmpfs " + top)
                    for k, fd in zip(keep, fds):
                        os.makedirs(k, mode=0o755, exist_ok=True)
                        src = f"/proc/self/fd/{fd}".encode()
                        if mount(src, k.encode(), None, %(rbind)d, None) != 0:
                            raise OSError(ctypes.get_errno(), "bind " + k)
                        os.close(fd)
                ok_fs = True
            except OSError as e:
                notes.append(f"mount namespace: {e}")
        else:
            notes.append("unshare(CLONE_NEWNS): " + os.strerror(ctypes.get_errno()))
    if ok_fs:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    else:
        notes.append("no fresh uid: the interpreter lives in a caller-private dir and there "
                     "is no mount namespace to bind it back")
    os.chdir(cfg["work"])
if cfg["nproc"]:
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    except (ValueError, OSError) as e:
        limits = False
        notes.append(f"setrlimit(RLIMIT_NPROC): {e}")

# which walls this process really is behind: facts seen from inside, against the caller's
def _ns(kind):
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None

def _only_loopback():
    try:
        with open("/proc/self/net/dev") as f:
            return [line.split(":")[0].strip() for line in f.readlines()[2:]] == ["lo"]
    except OSError:
        return False

def _outside_uid():
    uid = os.getuid()
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = map(int, line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid

host = cfg["host"]
if cfg["netns"] and _ns("net") not in (None, host["net"]) and _only_loopback():
    walls.append("net")
if _ns("pid") not in (None, host["pid"]):
    walls.append("pid")
_root = os.stat("/")
if (cfg["backend"] == "bwrap" and _ns("mnt") not in (None, host["mnt"])
        and [_root.st_dev, _root.st_ino] != host["root"]):
    walls.append("fs")
if _outside_uid() not in (0, host["uid"]):
    walls.append("uid")
if limits:
    walls.append("limits")
if cfg["audit"]:
    walls.append("audit")
os.write(cfg["mech_fd"], json.dumps({"walls": walls, "notes": notes}).encode())
os.close(cfg["mech_fd"])
missing = [w for w in cfg["require"] if w not in walls]
if missing:  # fail closed: the program's code never runs
    sys.stderr.write(f"sandbox: refused to run: walls {missing} not obtained: {notes}\n")
    sys.stderr.flush()
    os._exit(%(refused)d)
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
del cfg, walls, notes, host
import runpy
sys.argv = ["program.py"]
runpy.run_path("program.py", run_name="__main__")
""" % {"newnet": 0x40000000, "newns": 0x00020000, "rprivate": (1 << 18) | 16384,
       "nosuid_nodev": 2 | 4, "rbind": 4096 | 16384, "no_new_privs": 38,
       "tmpfs": _TMPFS_BYTES, "refused": _REFUSED}


def _interpreter_dirs() -> list[str]:
    """The dirs the interpreter runs from (base install, venv, the real binary's dir): as
    named and resolved, the shortest covering set."""
    dirs = {sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    dirs = {os.path.abspath(d) for d in dirs} | {os.path.realpath(d) for d in dirs}
    return _shortest(d for d in dirs if os.path.isdir(d))


def _shortest(paths) -> list[str]:
    """The paths not inside another one of them (a kept dir brings its subdirs)."""
    paths = sorted(set(paths))
    return [p for p in paths
            if not any(p != o and p.startswith(o.rstrip("/") + "/") for o in paths)]


def _overlays(work: Path) -> tuple[dict[str, list[str]], bool]:
    """`fallback` backend: dirs to cover with a fresh tmpfs in the child's mount namespace,
    each with the paths to bind back: world-writable dirs (keeping only our work dir and the
    interpreter's own dirs, e.g. a venv under /tmp) and caller-private dirs that hold the
    interpreter (e.g. /root/.pyenv under a 0700 /root). Also whether the interpreter needs
    them to stay importable under another uid."""
    tops: dict[str, list[str]] = {d: [] for d in _WORLD_WRITABLE if os.path.isdir(d)}
    need_fs = False
    needed = set(_interpreter_dirs()) | {p for p in sys.path if p and os.path.isdir(p)}
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
    return {top: _shortest(keep) for top, keep in tops.items()}, need_fs


@functools.lru_cache(maxsize=8)
def _bwrap_view(bwrap: str, root: bool, network: bool) -> tuple[tuple[str, ...], frozenset]:
    """`bwrap` backend: its namespaces and the filesystem view of the `fs` wall (the work dir
    is added per program), and the dirs that view has."""
    args = [bwrap, "--die-with-parent"]
    if root:  # no user namespace: it would map the program to real root; it drops to a fresh uid
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        args += [] if network else ["--unshare-net"]
    else:
        args += ["--unshare-all"] + (["--share-net"] if network else [])
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = ["--size", str(_TMPFS_BYTES)] if "--size" in _bwrap_help(bwrap) else []
    for tmp in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", *size, "--tmpfs", tmp]
    made = {"/", "/usr", "/proc", "/dev", "/tmp", "/dev/shm"}
    # after the tmpfs /tmp: a venv under /tmp stays visible
    for path in ["/etc/ld.so.cache", "/etc/alternatives", *_interpreter_dirs()]:
        if os.path.exists(path) and not path.startswith("/usr/"):
            args += _bwrap_bind(path, made, read_only=True)
    return tuple(args), frozenset(made)


def _bwrap_bind(path: str, made: set[str], read_only: bool) -> list[str]:
    """Bind `path` at the same place, creating its missing parents world-traversable (bwrap
    would make them 0700, which hides the path from a program under a fresh uid)."""
    args = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if parent not in made:
            args += ["--perms", "0755", "--dir", parent]
            made.add(parent)
    made.add(path)
    return args + ["--ro-bind" if read_only else "--bind", path, path]


@functools.lru_cache(maxsize=4)
def _bwrap_help(bwrap: str) -> str:
    try:
        return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=4)
def _bwrap_version(bwrap: str) -> str:
    try:
        return subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def _host() -> dict:
    """The caller's namespaces, root dir and uid: what a wall must differ from."""
    def ns(kind: str) -> Optional[str]:
        try:
            return os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            return None

    st = os.stat("/")
    return {"net": ns("net"), "pid": ns("pid"), "mnt": ns("mnt"),
            "root": [st.st_dev, st.st_ino], "uid": os.getuid()}


@dataclass
class SandboxResult:
    """What a program did: status, captured output (truncated), and how it ended."""

    status: str
    """`passed` (exit 0), `failed` (non-zero exit: exception, assertion, MemoryError),
    `timeout` (wall-clock or CPU limit) or `error` (killed by a signal, or not started)."""
    stdout: str = ""
    stderr: str = ""
    returncode: Optional[int] = None
    """Exit code; negative = killed by that signal (Popen convention; under bwrap, which
    reports a signal as 128 + its number, a program exiting with 129..192 itself reads so too)."""
    duration_s: float = 0.0
    isolation: list[str] = field(default_factory=list)
    """Walls it ran behind, as checked from inside, e.g. ["net", "pid", "fs", "uid", "limits",
    "audit"]."""
    backend: str = ""
    """`bwrap` or `fallback`."""
    notes: list[str] = field(default_factory=list)
    """Why a wall could not be built (empty when every wall tried was)."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _level(level: str, key: str) -> Level:
    if level not in LEVELS:
        raise ValueError(f"{key}: unknown sandbox isolation {level!r}; levels are "
                         f"{', '.join(LEVELS)} (strongest first)")
    return LEVELS[level]


def _bwrap_path(backend: str) -> Optional[str]:
    return shutil.which("bwrap") if backend == "bwrap" else None


@functools.lru_cache(maxsize=None)
def _probe(backend: str, bwrap: Optional[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(walls, notes) a program gets from `backend` here: one empty program run, once per
    process (per bwrap found)."""
    if backend == "bwrap" and bwrap is None:
        return (), ("bwrap not found on PATH",)
    r = _run("pass", 10.0, 1024, backend=backend, bwrap=bwrap, require=())
    if r.status != "passed":
        return (), tuple(r.notes) + (f"probe program {r.status}: {r.stderr.strip()[-400:]}",)
    return tuple(r.isolation), tuple(r.notes)


def isolation(level: str = DEFAULT_LEVEL) -> tuple[str, ...]:
    """The walls a program asking for `level` gets here (its backend probed once)."""
    backend = _level(level, "isolation").backend
    return _probe(backend, _bwrap_path(backend))[0]


def _strongest() -> Optional[str]:
    """The strongest level this machine gives in full."""
    for name, lv in LEVELS.items():
        walls = _probe(lv.backend, _bwrap_path(lv.backend))[0]
        if set(lv.walls) <= set(walls):
            return name
    return None


def _refusal(level: str, key: str, need: Sequence[str], walls: Sequence[str],
             notes: Sequence[str]) -> SandboxUnavailable:
    best = _strongest()
    backend = LEVELS[level].backend
    missing = [w for w in need if w not in walls]
    fix = {"bwrap": "install bubblewrap (apt-get install bubblewrap) where namespaces are allowed",
           "fallback": "run as root where unshare(2) is allowed"}[backend]
    way_out = (f"or name the level this machine gives: {key}={best} (walls "
               f"{', '.join(LEVELS[best].walls)})" if best else "no level can run here")
    return SandboxUnavailable(
        f"{key}: sandbox isolation {level!r} needs the walls {', '.join(need)}, but this machine "
        f"gives {', '.join(walls) or 'none'} with the {backend} backend (missing "
        f"{', '.join(missing)}: {'; '.join(notes) or 'no reason given'}); the strongest level "
        f"it gives is {best!r}. Nothing was run. To run: {fix}, {way_out}.")


def require(level: str = DEFAULT_LEVEL, key: str = "isolation", network: bool = False
            ) -> tuple[str, ...]:
    """The walls `level` gets here; raises :class:`SandboxUnavailable` (naming `key`, the
    config key that asked) when one it guarantees is missing. Call before any work that would
    be wasted, e.g. generation whose programs then could not run."""
    lv = _level(level, key)
    walls, notes = _probe(lv.backend, _bwrap_path(lv.backend))
    need = _needed(lv, network)
    if not set(need) <= set(walls):
        raise _refusal(level, key, need, walls, notes)
    return walls


def _needed(lv: Level, network: bool) -> tuple[str, ...]:
    return tuple(w for w in lv.walls if not (network and w == "net"))


def isolation_report(level: str = DEFAULT_LEVEL) -> dict:
    """What a stage's manifest records under `sandbox`: the level asked, its backend, the
    walls it guarantees and the walls programs actually get here (checked from inside)."""
    lv = _level(level, "isolation")
    bwrap = _bwrap_path(lv.backend)
    walls, notes = _probe(lv.backend, bwrap)
    return {"level": level, "backend": lv.backend, "required": list(lv.walls),
            "walls": list(walls), "ok": set(lv.walls) <= set(walls), "notes": list(notes),
            "bwrap": f"{bwrap} ({_bwrap_version(bwrap)})" if bwrap else None}


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
                max_output_chars: int = 100_000, network: bool = False,
                isolation: str = DEFAULT_LEVEL, key: str = "isolation") -> SandboxResult:
    """Run `code` as `__main__` in a sandboxed Python process behind the walls of the level
    `isolation` (see the module docstring) and report how it ended.

    `timeout_s` bounds wall-clock time (and CPU time, rounded up); `memory_mb` the address
    space; `max_procs` the processes/threads it may have; `max_file_mb` any file it writes,
    its stdout and stderr included. `network=True` keeps the caller's network (not for
    model-written code). Raises :class:`SandboxUnavailable`, naming `key` (the config key
    that asked for the level), when the walls cannot be built; the program then never runs.
    """
    lv = _level(isolation, key)
    require(isolation, key, network)
    bwrap = _bwrap_path(lv.backend)
    need = _needed(lv, network)
    r = _run(code, timeout_s, memory_mb, backend=lv.backend, bwrap=bwrap, require=need,
             stdin=stdin, max_procs=max_procs, max_file_mb=max_file_mb,
             max_output_chars=max_output_chars, network=network)
    if not set(need) <= set(r.isolation):  # the probe got them, this program did not
        notes = r.notes + ([r.stderr.strip()[-400:]] if r.stderr.strip() else [])
        raise _refusal(isolation, key, need, r.isolation, notes)
    return r


def _run(code: str, timeout_s: float, memory_mb: int, *, backend: str, bwrap: Optional[str],
         require: Sequence[str], stdin: str = "", max_procs: int = 32, max_file_mb: int = 16,
         max_output_chars: int = 100_000, network: bool = False) -> SandboxResult:
    """One program on `backend`; the bootstrap refuses to run it without the walls `require`."""
    t0 = time.monotonic()
    privileged = _privileged()
    uid = _pick_uid() if privileged else None
    work = Path(tempfile.mkdtemp(prefix="phi-sandbox-"))
    io_dir = Path(tempfile.mkdtemp(prefix="phi-sandbox-io-"))  # caller-only: outputs
    proc = None
    walls: list[str] = []
    notes: list[str] = []
    try:
        (work / "program.py").write_text(code, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(work / "program.py", uid, uid)
        cpu = max(1, int(timeout_s + 0.999))
        mem, fsize = memory_mb * 2**20, max_file_mb * 2**20
        overlays, need_fs = (_overlays(work) if privileged and backend == "fallback"
                             else ({}, False))
        cfg = {"rlimits": {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (mem, mem),
                           "RLIMIT_FSIZE": (fsize, fsize), "RLIMIT_CORE": (0, 0),
                           "RLIMIT_NOFILE": (256, 256)},
               "backend": backend, "require": list(require), "host": _host(),
               "uid": uid, "netns": not network, "overlays": overlays, "need_fs": need_fs,
               "work": str(work), "audit": not network, "mech_fd": -1,
               # NPROC counts per uid: exact for our fresh uid, approximate otherwise
               "nproc": max_procs if privileged else _user_procs() + max_procs}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
        mech_r, mech_w = os.pipe()
        cfg["mech_fd"] = mech_w
        argv = [sys.executable, "-I", "-B", "-u", "-c", _BOOTSTRAP, repr(cfg)]
        if backend == "bwrap":
            view, made = _bwrap_view(bwrap, privileged, network)
            argv = [*view, *_bwrap_bind(str(work), set(made), read_only=False),
                    "--chdir", str(work), *argv]
        with open(io_dir / "out", "wb") as out, open(io_dir / "err", "wb") as err:
            try:
                proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.PIPE,
                                        stdout=out, stderr=err, start_new_session=True,
                                        close_fds=True, pass_fds=(mech_w,))
            except OSError as e:
                return SandboxResult("error", stderr=f"could not start: {e}", backend=backend,
                                     duration_s=time.monotonic() - t0, notes=[str(e)])
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
            report = f.read().decode()
        if report:
            walls, notes = json.loads(report)["walls"], json.loads(report)["notes"]
        if backend == "fallback" and not privileged:
            notes.append("not root: the fallback gets no fresh uid and no network namespace")
        rc = proc.returncode
        if backend == "bwrap" and rc is not None and 128 < rc <= 128 + 64:
            rc = -(rc - 128)  # bwrap reports the program's death by signal N as 128 + N
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
        return SandboxResult(status, stdout, stderr, rc, elapsed, walls, backend, notes)
    except Exception as e:  # noqa: BLE001 - a sandbox failure is a result, never a raise
        if proc is not None:
            _cleanup(proc.pid, uid)
        return SandboxResult("error", stderr=f"sandbox error: {type(e).__name__}: {e}",
                             duration_s=time.monotonic() - t0, isolation=walls,
                             backend=backend, notes=notes + [f"{type(e).__name__}: {e}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(io_dir, ignore_errors=True)
        if uid is not None:
            _sweep_files(uid)


def _cleanup(pid: int, uid: Optional[int]) -> None:
    """Kill the program and everything it started (under bwrap, killing its session also
    ends its pid namespace: every process in it dies with the namespace's init)."""
    if uid is not None:
        _kill_uid(uid)
    _kill_session(pid)  # the child is its session's leader: sid == its pid


def _user_procs() -> int:
    me = os.getuid()
    return sum(1 for p in _pids() if _proc_uid(p) == me)


def run_programs(codes: Sequence[str], timeout_s: float = 10.0, memory_mb: int = 1024, *,
                 workers: Optional[int] = None, progress: bool = False,
                 isolation: str = DEFAULT_LEVEL, key: str = "isolation",
                 **kwargs) -> list[SandboxResult]:
    """`run_program` over many programs in parallel threads (each its own process), in order.
    Checks `isolation` first: nothing runs when its walls cannot be built."""
    require(isolation, key, kwargs.get("network", False))
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    results: list[Optional[SandboxResult]] = [None] * len(codes)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futs = {pool.submit(run_program, c, timeout_s, memory_mb, isolation=isolation, key=key,
                            **kwargs): i for i, c in enumerate(codes)}
        it = concurrent.futures.as_completed(futs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(futs), desc="sandbox")
        try:
            for fut in it:
                results[futs[fut]] = fut.result()
        except SandboxUnavailable:
            pool.shutdown(cancel_futures=True)
            raise
    return results  # type: ignore[return-value]
