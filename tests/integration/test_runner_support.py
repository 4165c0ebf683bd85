"""Helpers (no tests) for the runner's integration tests: a jail dir, an attack script, process checks."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sandbox_runner.policy import LAYERS, Network, Policy, Resources
from sandbox_runner.probe import probe

ROOT = Path(__file__).resolve().parents[2]
# A uid range per pytest process, so parallel runs and leftovers of earlier runs cannot collide.
_UIDS = itertools.count(64000 + (os.getpid() % 40) * 50)
PROBE = probe() if sys.platform == "linux" else {}
BACKENDS = ("bwrap", "syscalls")
NO_NS = tuple(layer for layer in LAYERS if layer != "namespaces")

ATTACK = r"""
import ctypes, errno, json, os, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def err(exc):
    return {"ok": False, "errno": errno.errorcode.get(exc.errno, str(exc.errno))}

def sys_call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return {"ok": True} if r >= 0 else {"ok": False, "errno": errno.errorcode[ctypes.get_errno()]}

def act(name, *a):
    if name == "read":
        with open(a[0]) as f:
            return {"ok": True, "data": f.read(64)}
    if name == "write":
        with open(a[0], "w") as f:
            f.write("pwned")
        return {"ok": True}
    if name == "socket":
        fam, kind = getattr(socket, a[0]), getattr(socket, a[1])
        s = socket.socket(fam, kind)
        if len(a) > 2:
            s.settimeout(2)
            s.connect((a[2], int(a[3])))
        return {"ok": True}
    if name == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(a[0].replace("@", "\0", 1))
        return {"ok": True}
    if name == "proc":
        return {"ok": True, "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    if name == "kill":
        os.kill(int(a[0]), 0)
        return {"ok": True}
    if name == "ptrace":
        return sys_call(101, 0, 0, 0, 0)  # PTRACE_TRACEME
    if name == "mount":
        src, tgt, fs = ctypes.c_char_p(b"none"), ctypes.c_char_p(os.getcwd().encode()), ctypes.c_char_p(b"tmpfs")
        r = libc.mount(src, tgt, fs, ctypes.c_ulong(0), None)
        return {"ok": True} if r == 0 else {"ok": False, "errno": errno.errorcode[ctypes.get_errno()]}
    if name == "unshare":
        return sys_call(272, 0x10000000)  # CLONE_NEWUSER
    if name == "caps":
        class H(ctypes.Structure):
            _fields_ = [("v", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class D(ctypes.Structure):
            _fields_ = [("e", ctypes.c_uint32), ("p", ctypes.c_uint32), ("i", ctypes.c_uint32)]
        d = (D * 2)()
        libc.capget(ctypes.byref(H(0x20080522, 0)), ctypes.byref(d))
        bnd = [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1]  # PR_CAPBSET_READ
        try:
            os.setuid(0)
            root = True
        except PermissionError:
            root = False
        return {"ok": True, "eff": d[0].e | d[1].e, "prm": d[0].p | d[1].p, "inh": d[0].i | d[1].i,
                "bnd": bnd, "became_root": root, "uid": os.getresuid()}
    if name == "memory":
        hog = []
        for _ in range(128):
            hog.append(bytearray(8 << 20))
        return {"ok": True, "mb": 8 * len(hog)}
    if name == "fork":
        kids, res = [], {"ok": True}
        for _ in range(int(a[0])):
            try:
                pid = os.fork()
            except OSError as exc:
                res = err(exc)
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        for k in kids:
            os.kill(k, signal.SIGKILL)
            os.waitpid(k, 0)
        res["forked"] = len(kids)
        return res
    if name == "fsize":
        with open(a[0], "wb") as f:
            for _ in range(int(a[1])):
                f.write(b"x" * (1 << 20))
        return {"ok": True}
    if name == "spin":
        while True:
            pass
    if name == "spin_child":
        pid = os.fork()
        if pid == 0:
            while True:
                pass
        _, status = os.waitpid(pid, 0)
        return {"ok": True, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
    if name == "sleep":
        open(os.path.join(a[0], "ready"), "w").close()
        time.sleep(60)
    if name == "env":
        return {"ok": True, "env": dict(os.environ)}
    if name == "threads":
        import threading
        out = []
        t = threading.Thread(target=lambda: out.append(1))
        t.start(); t.join()
        return {"ok": out == [1]}
    if name == "semlock":
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        value = ctx.Value("i", 0)  # a shared counter behind a POSIX semaphore (sem_open in /dev/shm)
        child = ctx.Process(target=lambda: setattr(value, "value", 42))
        child.start(); child.join(10)
        return {"ok": True, "value": value.value, "shm": sorted(os.listdir("/dev/shm"))}
    if name == "pty":
        import fcntl, termios
        master, slave = os.openpty()
        tty = os.ttyname(slave)
        os.write(master, b"typed\n")
        echoed = os.read(slave, 64).decode()
        try:
            fcntl.ioctl(slave, termios.TIOCSTI, b"x")
            sti = "allowed"
        except OSError as exc:
            sti = errno.errorcode[exc.errno]
        return {"ok": True, "tty": tty, "ptys": sorted(os.listdir("/dev/pts")), "read": echoed, "tiocsti": sti}
    if name == "exit":
        os._exit(int(a[0]))
    if name == "segv":
        ctypes.string_at(0)
    if name == "serve":
        # Trap SIGTERM, spawn a tree, say ready, wait.
        def bye(*_):
            open(os.path.join(a[0], "got-sigterm"), "w").close()
            os._exit(0)
        signal.signal(signal.SIGTERM, bye)
        for _ in range(int(a[1])):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        if os.fork() == 0:  # a daemon: double fork + setsid, re-parented away from us
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        open(os.path.join(a[0], "ready"), "w").close()
        while True:
            time.sleep(1)
    raise SystemExit(f"unknown action {name}")

try:
    print(json.dumps(act(*sys.argv[1:])), flush=True)
except MemoryError:
    print(json.dumps({"ok": False, "errno": "MemoryError"}), flush=True)
except OSError as exc:
    print(json.dumps(err(exc)), flush=True)
"""


def attack_python() -> str:
    """A python every uid can execute (the venv's base may sit under /root, 0700)."""
    for candidate in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        if os.path.exists(candidate) and _world_reachable(candidate):
            return candidate
    pytest.skip("no python interpreter reachable by an unprivileged uid")


def _world_reachable(path: str) -> bool:
    p = Path(path)
    return all(os.stat(d).st_mode & 0o001 for d in [*p.parents][:-1]) and bool(os.stat(p).st_mode & 0o001)


def runner_argv() -> list[str]:
    """``python -I -m sandbox_runner`` when the package is installed; from the checkout otherwise."""
    probe_installed = subprocess.run(
        [sys.executable, "-I", "-c", "import sandbox_runner"], capture_output=True, check=False
    )
    if probe_installed.returncode == 0:
        return [sys.executable, "-I", "-m", "sandbox_runner"]
    boot = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from sandbox_runner.cli import main; sys.exit(main())"
    return [sys.executable, "-I", "-c", boot]


RUNNER = runner_argv()


def need(*layers: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("runner integration tests drop to per-test uids: they need root")
    for layer in layers:
        if not PROBE.get(layer, {}).get("available"):
            pytest.skip(f"layer {layer} unavailable here: {PROBE.get(layer, {}).get('detail')}")


@dataclass
class Jail:
    """A test's directories (short paths under /tmp) and its policy; ``code`` is ro, ``data`` is rw."""

    root: Path
    uid: int
    backend: str
    policy: Policy = field(init=False)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.code, self.data, self.outside = self.root / "code", self.root / "data", self.root / "outside"
        for d in (self.code, self.data, self.outside):
            d.mkdir()
        os.chown(self.data, self.uid, self.uid)
        self.outside.chmod(0o777)  # writable for anyone: only the sandbox can stop the plugin here
        (self.code / "attack.py").write_text(ATTACK)
        self.policy = Policy(
            name=f"t{self.uid}",
            ro_paths=(str(self.code),),
            rw_paths=(str(self.data),),
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.data), "LANG": "C.UTF-8"},
            cwd=str(self.data),
            uid=self.uid,
            gid=self.uid,
            backend=self.backend,  # type: ignore[arg-type]
            cgroup_name=f"sbx-test/t{self.uid}",
            required=LAYERS if self.backend == "bwrap" else NO_NS,
            report_path=str(self.root / "report.json"),
            resources=Resources(memory_bytes=128 << 20, processes=16, file_size_bytes=1 << 20),
        )

    def with_(self, **changes: Any) -> Jail:
        self.policy = replace(self.policy, **changes)
        return self

    def network(self, enabled: bool, ports: tuple[int, ...] = ()) -> Jail:
        return self.with_(network=Network(enabled=enabled, connect_ports=ports))

    def resources(self, **changes: Any) -> Jail:
        return self.with_(resources=replace(self.policy.resources, **changes))

    def argv(self, *cmd: str) -> list[str]:
        pol = self.root / "policy.json"
        pol.write_text(self.policy.to_json())
        return [*RUNNER, "--policy", str(pol), "--", *cmd]

    def start(self, *action: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        argv = self.argv(attack_python(), "-I", str(self.code / "attack.py"), *action)
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
        )
        self.procs.append(proc)
        return proc

    def run(self, *action: str, env: dict[str, str] | None = None, timeout: float = 20) -> Result:
        proc = self.start(*action, env=env)
        out, err = proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return Result(proc.returncode, json.loads(lines[-1]) if lines else {}, out, err)

    def survivors(self) -> list[int]:
        return pids_of_uid(self.uid)


@dataclass
class Result:
    returncode: int
    result: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def errno(self) -> str | None:
        assert self.result, f"no result; rc={self.returncode} stderr={self.stderr!r}"
        return self.result.get("errno")


def pids_of_uid(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            except (OSError, StopIteration):
                continue
            if str(uid) in uids:
                out.append(int(entry))
    return out


def wait_until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@contextlib.contextmanager
def open_jail(backend: str) -> Iterator[Jail]:
    """A jail for ``backend`` (skips where this machine cannot enforce it); on exit everything it started
    is killed and its directories and cgroups removed."""
    need("uid", "landlock", "seccomp", *(("bwrap",) if backend == "bwrap" else ()))
    root = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    root.chmod(0o755)
    j = Jail(root, next(_UIDS), backend)
    try:
        yield j
    finally:
        for proc in j.procs:  # our runners, by process group (start_new_session)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for pid in j.survivors():  # the test's own uid: only processes this test started
            os.kill(pid, signal.SIGKILL)
        from sandbox_runner.layers.cgroup import cleanup

        if j.policy.cgroup_name:
            cleanup(j.policy.cgroup_name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def jail(request: pytest.FixtureRequest) -> Iterator[Jail]:
    with open_jail(request.param) as j:
        yield j
