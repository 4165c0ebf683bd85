"""The host side of egress: starts the egress process, gives each plugin its namespace and registers it.

Used by the supervisor (one point for all running plugins) and by the installer (one point for one pip run).
The point keeps every namespace and listener it made, so an egress process that dies is restarted and
handed all of them again; a plugin's connections in flight are lost, its namespace and grant are not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from host.egress import netns
from host.egress.rules import Grant, literal

log = logging.getLogger(__name__)
PROXY_URL = f"http://127.0.0.1:{netns.PROXY_PORT}"


def proxy_env() -> dict[str, str]:
    """What a plugin with network gets: every common spelling of the proxy variables."""
    return {k: PROXY_URL for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


NAME_NET = "127.77"  # granted names get listeners at 127.77.x.y inside the namespace (all of 127/8 is on lo)


@dataclass(frozen=True)
class Fixed:
    """A listener inside the namespace that forwards plain TCP to one granted destination."""

    bind: str
    port: int
    dest: str  # a loopback literal (the same address on the host side) or a granted name


def fixed_binds(grant: Grant) -> list[Fixed]:
    """Destinations reachable with plain sockets, no proxy support needed: a listed loopback literal gets a
    listener at the same address and port; a listed name (not a wildcard) gets one at its own 127.77.x.y,
    which the namespace's /etc/hosts gives as the name's address. Other literals go through the proxy."""
    out: list[Fixed] = []
    names: dict[str, str] = {}
    for d in grant.destinations:
        ip = literal(d.host) if d.ip else None
        if ip is not None:
            if ip.is_loopback and ip.version == 4 and (str(ip), d.port) != ("127.0.0.1", netns.PROXY_PORT):
                out.append(Fixed(str(ip), d.port, str(ip)))
        elif not d.wildcard and len(names) < 65000:
            n = names.setdefault(d.host, f"{NAME_NET}.{len(names) // 250}.{len(names) % 250 + 1}")
            out.append(Fixed(n, d.port, d.host))
    return out


def hosts_file(grant: Grant) -> str:
    """/etc/hosts for the namespace: localhost, and each granted name at its listener's address."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    lines += sorted({f"{f.bind} {f.dest}" for f in fixed_binds(grant) if f.bind.startswith(NAME_NET + ".")})
    return "\n".join(lines) + "\n"


@dataclass
class Attached:
    grant: Grant
    ns: netns.Netns
    specs: list[dict[str, Any]] = field(default_factory=list)


class Tracker(Protocol):
    """The supervisor's registry of its own children (so its orphan reaper leaves the egress process be)."""

    lock: threading.RLock
    pids: set[int]


class EgressPoint:
    def __init__(self, uid: int | None, on_refused: Callable[[dict[str, Any]], None] | None = None,
                 children: Tracker | None = None) -> None:
        self.uid = uid
        self.children = children
        self.on_refused = on_refused
        self._attached: dict[str, Attached] = {}
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------------

    def _ensure_process(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._control is not None:
            return self._control
        if self._proc is not None:
            log.error("egress process exited (%s); restarting it", self._proc.returncode)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "host.egress", "--control-fd", str(theirs.fileno())]
        if self.uid is not None:
            argv += ["--uid", str(self.uid), "--gid", str(self.uid)]
        lock = self.children.lock if self.children is not None else contextlib.nullcontext()
        try:
            with lock:  # registered before the reaper can see it as an orphan
                if self.children is not None and self._proc is not None:
                    self.children.pids.discard(self._proc.pid)
                self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                              close_fds=True, env=_egress_env())
                if self.children is not None:
                    self.children.pids.add(self._proc.pid)
        finally:
            theirs.close()
        if self._control is not None:
            self._control.close()
        self._control = ours
        threading.Thread(target=self._events, args=(ours,), daemon=True, name="egress-events").start()
        for name, att in self._attached.items():
            self._register(ours, name, att)
        return ours

    def check(self) -> None:
        """Restart a dead egress process (the supervisor calls this from its main loop); every namespace
        and grant is handed to the new one."""
        with self._lock:
            if self._attached and not self._closed:
                self._ensure_process()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for att in self._attached.values():
                att.ns.close()
            self._attached.clear()
            if self._control is not None:
                self._control.close()
                self._control = None
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None

    # -- plugins ----------------------------------------------------------------------------------------

    def attach(self, name: str, grant: Grant) -> int:
        """The fd of ``name``'s network namespace, created (with its listeners) and registered on first use;
        re-registered when the grant changed (an upgrade). The fd stays owned by the point."""
        with self._lock:
            att = self._attached.get(name)
            if att is not None and att.grant == grant:
                self._ensure_process()
                return att.ns.fd
            if att is not None:
                self.detach(name)
            fixed = fixed_binds(grant)
            ns = netns.create([("127.0.0.1", netns.PROXY_PORT), *((f.bind, f.port) for f in fixed)])
            specs: list[dict[str, Any]] = [{"kind": "proxy"}]
            specs += [{"kind": "fixed", "host": f.dest, "port": f.port} for f in fixed]
            att = Attached(grant, ns, specs)
            try:
                control = self._ensure_process()  # a (re)started process gets every earlier registration
                self._register(control, name, att)
            except BaseException:
                ns.close()
                raise
            self._attached[name] = att
            return ns.fd

    def detach(self, name: str) -> None:
        with self._lock:
            att = self._attached.pop(name, None)
            if att is None:
                return
            if self._control is not None:
                with contextlib.suppress(OSError):
                    self._control.send(json.dumps({"op": "remove", "plugin": name}).encode())
            att.ns.close()

    def _register(self, control: socket.socket, name: str, att: Attached) -> None:
        msg = {"op": "add", "plugin": name, "grant": att.grant.to_json(), "listeners": att.specs}
        socket.send_fds(control, [json.dumps(msg).encode()], [s.fileno() for s in att.ns.listeners])

    def _events(self, control: socket.socket) -> None:
        while True:
            try:
                data = control.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if self.on_refused is not None and event.get("event") == "refused":
                try:
                    self.on_refused(event)
                except Exception:
                    log.exception("egress: refusal handler failed")


def _egress_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}
