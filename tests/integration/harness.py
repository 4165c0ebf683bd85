"""Drive a real `host` for integration tests: CLI runs, a served host on a free port, process checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from host import control

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "plugins"
BUNDLED = REPO / "plugins"
HOST = [sys.executable, "-m", "host"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_host(home: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
             check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HOST, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"host {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # it exited between the two looks
        return False


def descendants(pid: int) -> set[int]:
    """All live descendants of pid (by walking /proc children lists)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
                for k in kids:
                    if k not in out:
                        out.add(k)
                        todo.append(k)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def wait_for(pred: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServedHost:
    """A `host serve` subprocess on a free port."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    admin_port: int = 0  # the admin listener's (HOST_ADMIN_BIND), a free port of its own unless env sets it
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait_plugins: tuple[str, ...] = (), timeout: float = 60, port: int | None = None) -> ServedHost:
        self.port = port or free_port()
        self.log = self.home.parent / f"serve-{self.port}.log"
        # Never the default 127.0.0.1:8001: tests (and hosts) run side by side. Kept across restarts.
        if "HOST_ADMIN_BIND" not in self.env:
            self.admin_port = self.admin_port or free_port()
            self.env["HOST_ADMIN_BIND"] = f"127.0.0.1:{self.admin_port}"
        elif self.env["HOST_ADMIN_BIND"]:
            self.admin_port = int(self.env["HOST_ADMIN_BIND"].rpartition(":")[2])
        env = {**os.environ, "HOST_WEB_WORKERS": "1", **self.env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*HOST, "--home", str(self.home), "serve", "--create", "--bind",
                                          f"127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        wait_for(self._healthy, timeout, what=f"host on port {self.port} (log: {self.log})")
        for name in wait_plugins:
            self.wait_state(name, "running", timeout)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"host serve exited with {self.proc.returncode}:\n{self.read_log()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict[str, Any]:
        """What anyone may see: /healthz (states, versions, sandbox levels; no pid, no stderr)."""
        return dict(httpx.get(self.url + "/healthz", timeout=5).json())

    def status(self) -> dict[str, Any]:
        """What the operator sees (`host list`): the supervisor's root-only control socket."""
        return control.call(self.home / "run" / "control.sock", "status", timeout=10)

    def plugin(self, name: str) -> dict[str, Any]:
        """/healthz's entry for the plugin, with the supervisor's detail (pid, reason, restarts, sandbox)."""
        return {**self.health()["plugins"].get(name, {}), **self.status()["plugins"].get(name, {})}

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            p = self.plugin(name)
            return p if p.get("state") == state else None
        try:
            return dict(wait_for(check, timeout, interval=0.05, what=f"{name} to be {state}"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now: {self.plugin(name)}\n{self.read_log()[-3000:]}") from None

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def origin(self, name: str, domain: str = "localhost") -> str:
        """Plugin ``name``'s own origin (origin mode; *.localhost is the default on a loopback bind)."""
        return f"http://{name}.{domain}:{self.port}"

    def origin_client(self, name: str, domain: str = "localhost", **kw: Any) -> httpx.Client:
        """A client for plugin ``name``'s own origin. Python's resolver does not map *.localhost to loopback
        (browsers and curl do), so it connects to 127.0.0.1 and sends the origin's Host."""
        return httpx.Client(base_url=self.url, headers={"Host": f"{name}.{domain}:{self.port}"},
                            timeout=kw.pop("timeout", 30), **kw)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_host(self.home, *args, timeout=timeout, env=self.env)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def all_pids(self) -> set[int]:
        assert self.proc is not None
        return {self.proc.pid} | descendants(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"host did not stop within {timeout}s:\n{self.read_log()[-3000:]}") from None


@contextmanager
def short_home() -> Iterator[Path]:
    """A fresh home under /tmp, short enough for Unix socket paths (108 bytes); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    try:
        yield d / "h"
    finally:
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    """Mount points below ``root`` in our mount namespace (plugin disk images), deepest first."""
    prefix = f"{root.resolve()}/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount what a host killed by a test left mounted under ``root``, before the tree is deleted (else
    rmtree empties the images and leaves their mounts and loop devices behind)."""
    for point in mounts_under(root):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False, timeout=30)


@contextmanager
def served_plugins(*sources: Path, wait: tuple[str, ...] = (), env: dict[str, str] | None = None
                   ) -> Iterator[ServedHost]:
    """Install ``sources`` into a fresh home and serve them until the block ends."""
    with short_home() as home:
        for src in sources:
            run_host(home, "install", str(src), "--yes", check=True)
        host = ServedHost(home, env=env or {}).start(wait_plugins=wait)
        try:
            yield host
        finally:
            host.stop()


def plugin_pid(host: ServedHost, name: str) -> int:
    """The pid of the plugin's app process as seen from the host (its gunicorn worker reports it)."""
    return int(json.loads(host.get(f"/plugins/{name}/pid").text)["pid"])
