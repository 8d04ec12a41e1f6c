"""The sandbox contains hostile programs: each case runs a real attack and checks the damage
did not happen (not just that the program "failed"). The walls a level claims are checked by
attacks from the program and from processes it starts (a shell, curl, a second Python), on
each backend this machine has; a level the machine cannot give refuses before running code.

The default level (`strict`, bubblewrap) is never skipped: without `bwrap` these tests fail
with the sandbox's own error (`.ci/run` installs it)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from phi_lib import sandbox
from phi_lib.sandbox import (LEVELS, STATUSES, SandboxUnavailable, isolation, isolation_report,
                             run_program, run_programs)

pytestmark = pytest.mark.unit


def _gets(level: str) -> bool:
    return set(LEVELS[level].walls) <= set(isolation(level))


# one level per backend: bwrap always (fails loudly without it), the fallback as it is here
BACKEND_LEVELS = ["strict", "standard" if _gets("standard") else "weak"]


@pytest.fixture(params=BACKEND_LEVELS)
def level(request) -> str:
    return request.param


def _running(token: str) -> list[int]:
    """Host pids of live processes whose command line holds `token` (works across pid
    namespaces, where the program's own pid numbers mean nothing to us)."""
    pids = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    pids.append(int(p))
        except (OSError, ValueError):
            pass
    return pids


class LoopbackServer:
    """A TCP server on the caller's 127.0.0.1 that records what every client sends."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.got.append(conn.recv(100))
                except OSError:
                    pass

    def close(self) -> list[bytes]:
        self._stop = True
        self._thread.join()
        self.sock.close()
        return self.got


def test_status_and_output():
    r = run_program("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (r.status, r.stdout, r.stderr, r.returncode) == ("passed", "out\n", "err\n", 0)
    assert r.backend == "bwrap" and set(LEVELS["strict"].walls) <= set(r.isolation)
    assert run_program("assert 1 == 2").status == "failed"
    assert run_program("raise SystemExit(3)").returncode == 3
    assert run_program("def f(:\n  pass").status == "failed"
    assert "SyntaxError" in run_program("def f(:\n  pass").stderr
    assert run_program("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    r = run_program("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert (r.status, r.returncode) == ("error", -signal.SIGSEGV)
    assert set(STATUSES) == {"passed", "failed", "timeout", "error"}


def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass", timeout_s=1.5)
    assert r.status == "timeout"
    r = run_program("import time\ntime.sleep(60)", timeout_s=1)  # wall clock, not CPU
    assert r.status == "timeout"


def test_fork_bomb_is_contained_and_reaped(level):
    code = textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    r = run_program(code, timeout_s=2, max_procs=16, isolation=level)
    assert r.status in ("timeout", "failed")
    # a (double-forked, setsid) daemon dies with the program too
    token = f"phi-daemon-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "120", {token!r}])
            os._exit(0)
        time.sleep(0.5)
    """)
    r = run_program(code, timeout_s=5, isolation=level)
    assert r.status == "passed", r.stderr
    left = _running(token)
    if "uid" in r.isolation or "pid" in r.isolation:
        assert not left, "daemon survived the sandbox"
    else:  # unprivileged fallback: a self-made session escapes; documented, bounded by RLIMIT_CPU
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def test_background_child_killed_after_normal_exit(level):
    token = f"phi-child-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", {token!r}])
        print("started")
    """)
    r = run_program(code, timeout_s=5, isolation=level)
    assert r.status == "passed" and r.stdout == "started\n", r.stderr
    assert not _running(token)


def test_huge_allocation_fails_cleanly():
    r = run_program("x = bytearray(50 * 2**30)\nprint('allocated')", memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_cannot_write_or_delete_outside(tmp_path, level):
    """Neither the program nor a shell it starts can touch a caller's file, even in a
    world-writable dir; the test file itself (the caller's, outside /tmp) cannot be opened
    for writing, and under `fs` it does not exist at all."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    outside = tmp_path / "written.txt"
    mine = Path(__file__).resolve()
    code = textwrap.dedent(f"""
        import os, subprocess
        for attempt in (lambda: os.remove({str(victim)!r}),
                        lambda: open({str(outside)!r}, "w").write("pwned"),
                        lambda: open({str(victim)!r}, "w").write("pwned")):
            try:
                attempt()
            except OSError as e:
                print("blocked", type(e).__name__)
        sh = subprocess.run(["sh", "-c", "echo pwned > {victim}; rm -f {victim}; "
                             "echo pwned > {outside}"], capture_output=True, text=True)
        print("sh exit", sh.returncode)
        try:  # opened for append, nothing written: harmless even if a wall were missing
            os.close(os.open({str(mine)!r}, os.O_WRONLY | os.O_APPEND))
            print("caller file writable")
        except OSError as e:
            print("caller file", type(e).__name__)
        try:
            open({str(mine)!r}).read()
            print("caller file readable")
        except OSError as e:
            print("caller file unreadable", type(e).__name__)
        open("inside.txt", "w").write("fine")  # its own work dir is writable
        print(open("inside.txt").read())
    """)
    r = run_program(code, isolation=level)
    assert r.status == "passed", r.stderr
    if {"uid", "fs"} & set(r.isolation):
        assert victim.read_text() == "keep me" and not outside.exists()
        assert "caller file writable" not in r.stdout
    if "fs" in r.isolation:
        assert "caller file unreadable FileNotFoundError" in r.stdout
    assert r.stdout.strip().endswith("fine")


def test_tmp_writes_do_not_leak(level):
    name = f"phi-sandbox-leak-{uuid.uuid4().hex}"
    r = run_program(f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')",
                    isolation=level)
    assert r.status == "passed", r.stderr
    if {"uid", "fs"} & set(r.isolation):
        assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}")


def _escape_program(port: int, victim: Path) -> str:
    """A program that tries the network and a caller's file from itself and from processes it
    starts, which the audit hook does not reach: a second Python, curl, a shell."""
    connect = (f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); "
               "s.sendall(b'child-python'); print('connected')")
    return textwrap.dedent(f"""
        import shutil, socket, subprocess, sys
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"program")
            print("program connected")
        except OSError as e:
            print("program blocked", type(e).__name__)
        py = subprocess.run([sys.executable, "-c", {connect!r}], capture_output=True, text=True)
        print("python", py.returncode, py.stdout.strip())
        if shutil.which("curl"):
            curl = subprocess.run(["curl", "-s", "-m", "2", "-d", "curl",
                                   "http://127.0.0.1:{port}/"], capture_output=True)
            print("curl", curl.returncode)
        sh = subprocess.run(["sh", "-c", "echo pwned >> {victim}"], capture_output=True)
        print("sh", sh.returncode)
    """)


def test_child_processes_are_held_by_the_same_walls(tmp_path, level):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    server = LoopbackServer()
    try:
        r = run_program(_escape_program(server.port, victim), timeout_s=15, isolation=level)
    finally:
        got = server.close()
    assert r.status == "passed", r.stderr
    assert "program blocked PermissionError" in r.stdout  # the audit hook: a clear error
    if "net" in r.isolation:
        assert got == [] and "connected" not in r.stdout, (got, r.stdout)
    else:  # `weak` without root: the escape its docstring warns of
        assert r.isolation == ["limits", "audit"] and b"child-python" in got
    if {"uid", "fs"} & set(r.isolation):
        assert victim.read_text() == "keep me"
    assert set(LEVELS[level].walls) <= set(r.isolation)  # what the level claims, it got


def test_the_network_check_can_fail(level):
    """Positive control for the test above: with the caller's network kept (`network=True`,
    never for model code) the same program and its children do reach the loopback server."""
    server = LoopbackServer()
    try:
        r = run_program(_escape_program(server.port, Path("/nonexistent/x")), timeout_s=15,
                        isolation=level, network=True)
    finally:
        got = server.close()
    assert r.status == "passed", r.stderr
    assert "net" not in r.isolation and b"program" in got and b"child-python" in got


def test_caller_processes_are_out_of_reach(level):
    """The program cannot see the caller under `pid`, nor read its private /proc files or
    signal it (checked with signal 0 via libc, past the audit hook) under `uid` or `pid`."""
    me, parent = os.getpid(), os.getppid()
    code = textwrap.dedent(f"""
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        for pid in ({me}, {parent}):
            print("seen" if os.path.exists(f"/proc/{{pid}}/cmdline") and
                  b"pytest" in open(f"/proc/{{pid}}/cmdline", "rb").read() else "unseen")
            try:
                open(f"/proc/{{pid}}/environ", "rb").read()
                print("environ readable")
            except OSError as e:
                print("environ", type(e).__name__)
            print("signal reaches" if libc.kill(pid, 0) == 0 else "signal refused")
            for sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    os.kill(pid, sig)
                    print("killed")
                except OSError as e:
                    print("blocked", type(e).__name__)
        try:
            os.killpg(os.getpgid({me}), signal.SIGKILL)
        except OSError as e:
            print("blocked", type(e).__name__)
    """)
    r = run_program(code, isolation=level)
    assert r.status == "passed", r.stderr
    assert r.stdout.count("blocked") == 5 and "killed" not in r.stdout, r.stdout  # we are here
    if "pid" in r.isolation:
        assert "seen" not in r.stdout.split(), r.stdout
    if {"uid", "pid"} & set(r.isolation):
        assert "environ readable" not in r.stdout and "signal reaches" not in r.stdout, r.stdout


def test_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("PHI_TEST_SECRET", "s3cret-token")
    r = run_program("import os\nprint(sorted(os.environ.items()))")
    assert r.status == "passed" and "s3cret-token" not in r.stdout
    assert "PHI_TEST_SECRET" not in r.stdout


def test_output_is_capped():
    r = run_program("import sys\nwhile True: sys.stdout.write('x' * 65536)", max_file_mb=1,
                    max_output_chars=1000)
    assert r.status in ("failed", "timeout") and len(r.stdout) < 1100


def test_many_in_parallel_lose_nothing():
    codes = [f"import time\ntime.sleep(0.05)\nprint({i} * {i})" for i in range(24)]
    codes[5] = "raise ValueError('five')"
    rs = run_programs(codes, timeout_s=10, workers=6)
    assert [r.status for r in rs].count("passed") == 23
    assert rs[5].status == "failed" and "five" in rs[5].stderr
    assert all(rs[i].stdout == f"{i * i}\n" for i in range(24) if i != 5)


# ----------------------------------------------------------------------------- fail closed
def test_the_default_level_is_obtained_here():
    """What CI claims: bubblewrap's walls, plus a fresh uid when we are root; the probe runs
    once per process."""
    walls = isolation()
    assert sandbox.DEFAULT_LEVEL == "strict" and set(LEVELS["strict"].walls) <= set(walls)
    assert ("uid" in walls) == (os.geteuid() == 0)
    rep = isolation_report()
    assert rep["ok"] and rep["backend"] == "bwrap" and rep["walls"] == list(walls)
    assert "bubblewrap" in rep["bwrap"]


def test_probe_is_cached(monkeypatch):
    isolation("strict")
    monkeypatch.setattr(sandbox, "_run", lambda *a, **k: pytest.fail("probed twice"))
    assert isolation("strict") == isolation("strict")


def test_unobtainable_level_raises_before_running(monkeypatch):
    """A machine that gives only rlimits (Docker's default seccomp refuses namespaces)."""
    real_run, ran = sandbox._run, []

    def spy(code, *a, **k):
        ran.append(code)
        return real_run(code, *a, **k)

    monkeypatch.setattr(sandbox, "_probe", lambda backend, bwrap: (
        ("limits", "audit"), ("simulated: unshare(CLONE_NEWNET): Operation not permitted",)))
    monkeypatch.setattr(sandbox, "_run", spy)
    for level in ("strict", "standard"):
        with pytest.raises(SandboxUnavailable) as e:
            run_programs(["print('ran')"], isolation=level, key="evaluate.sandbox_isolation")
        msg = str(e.value)
        assert msg.startswith("evaluate.sandbox_isolation: sandbox isolation " + repr(level))
        assert "strongest level it gives is 'weak'" in msg and "Operation not permitted" in msg
    assert ran == []  # nothing ran, not even the first program
    r = run_program("print('ran')", isolation="weak")  # the weaker level, chosen by name
    assert r.status == "passed" and r.stdout == "ran\n" and ran == ["print('ran')"]


def test_bwrap_missing_refuses_strict(monkeypatch, tmp_path):
    """For real: bwrap hidden from PATH; `strict` refuses, a weaker level named runs."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bwrap not found on PATH") as e:
        run_program("print('ran')", key="synth.sandbox_isolation")
    assert str(e.value).startswith("synth.sandbox_isolation: sandbox isolation 'strict'")
    assert not isolation_report("strict")["ok"]
    weaker = BACKEND_LEVELS[1]
    r = run_program("print('ran')", isolation=weaker)
    assert r.status == "passed" and r.backend == "fallback"


def test_a_wall_lost_after_the_probe_stops_the_program(monkeypatch):
    """The bootstrap checks the walls itself: asked for one its backend does not build (a pid
    namespace from the fallback), it exits before the program's first line."""
    r = sandbox._run("print('ran')", 5, 256, backend="fallback", bwrap=None, require=("pid",))
    assert r.returncode == sandbox._REFUSED and r.stdout == "" and "pid" not in r.isolation
    monkeypatch.setitem(LEVELS, "pidfallback", sandbox.Level("fallback", ("pid", "limits")))
    monkeypatch.setattr(sandbox, "_probe", lambda backend, bwrap: (("pid", "limits"), ()))
    with pytest.raises(SandboxUnavailable, match="missing pid"):
        run_program("print('ran')", isolation="pidfallback")


def test_unknown_level_and_config_key():
    from phi_lib.config import ConfigError, load

    with pytest.raises(ValueError, match="levels are strict, standard, weak"):
        run_program("pass", isolation="strong")
    cfg = load()
    assert cfg.synth.sandbox_isolation == cfg.evaluate.sandbox_isolation == sandbox.DEFAULT_LEVEL
    with pytest.raises(ConfigError, match="evaluate.sandbox_isolation"):
        load(overrides={"evaluate.sandbox_isolation": "strong"})


def test_an_interpreter_under_tmp_stays_visible(tmp_path):
    """/tmp is a fresh tmpfs in the sandbox; a venv living there (a checkout in `mktemp -d`)
    is bound back, or the program could not start sys.executable. Run for real from a venv
    under /tmp (the sandbox module needs only the standard library)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = ("from phi_lib.sandbox import run_program\n"
            "for level in %r:\n"
            "    r = run_program('import subprocess, sys; print(sys.prefix); '\n"
            "                    'subprocess.run([sys.executable, \"-c\", \"print(7)\"])',\n"
            "                    isolation=level)\n"
            "    print(level, r.status, r.stdout.split(), r.stderr[-300:])\n" % BACKEND_LEVELS)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert out.returncode == 0, out.stderr
    for level in BACKEND_LEVELS:
        assert f"{level} passed ['{venv}', '7']" in out.stdout, out.stdout


def test_stage_01_manifest_records_the_isolation_obtained(tmp_path):
    """Stage 01 runs the exercises: its manifest says which walls they got (stage 06's:
    tests/test_eval_units.py)."""
    from phi_lib.config import load
    from phi_lib.synth import SynthStage

    cfg = load("params/smoke.yaml", {"run.output_root": str(tmp_path)})
    cfg.synth.kinds = {"code_exercises": 2}
    m = SynthStage(cfg, tmp_path).write_manifest()
    assert m["sandbox"] == isolation_report("strict") and m["sandbox"]["ok"]
    assert {"net", "pid", "fs"} <= set(m["sandbox"]["walls"])
    assert json.loads((tmp_path / "manifest.json").read_text())["sandbox"] == m["sandbox"]
    cfg.synth.check_exercises = False  # no code ran: nothing to claim
    assert SynthStage(cfg, tmp_path).write_manifest()["sandbox"] is None
