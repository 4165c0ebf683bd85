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
from typing import Any

from host.egress import netns
from host.egress.rules import Grant, literal

log = logging.getLogger(__name__)
PROXY_URL = f"http://127.0.0.1:{netns.PROXY_PORT}"


def proxy_env() -> dict[str, str]:
    """What a plugin with network gets: every common spelling of the proxy variables."""
    return {k: PROXY_URL for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


def fixed_binds(grant: Grant) -> list[tuple[str, int]]:
    """Destinations reachable with plain sockets, no proxy support needed: loopback literals listed in the
    grant get a listener at the same address and port inside the namespace (127.0.0.0/8 is all on lo)."""
    out: list[tuple[str, int]] = []
    for d in grant.destinations:
        ip = literal(d.host) if d.ip else None
        if ip is not None and ip.is_loopback and (str(ip), d.port) != ("127.0.0.1", netns.PROXY_PORT):
            out.append((str(ip), d.port))
    return out


@dataclass
class Attached:
    grant: Grant
    ns: netns.Netns
    specs: list[dict[str, Any]] = field(default_factory=list)


class EgressPoint:
    def __init__(self, uid: int | None, on_refused: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.uid = uid
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
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                          close_fds=True, env=_egress_env())
        finally:
            theirs.close()
        if self._control is not None:
            self._control.close()
        self._control = ours
        threading.Thread(target=self._events, args=(ours,), daemon=True, name="egress-events").start()
        for name, att in self._attached.items():
            self._register(ours, name, att)
        return ours

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
            binds = [("127.0.0.1", netns.PROXY_PORT), *fixed_binds(grant)]
            ns = netns.create(binds)
            specs: list[dict[str, Any]] = [{"kind": "proxy"}]
            specs += [{"kind": "fixed", "host": h, "port": p} for h, p in binds[1:]]
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
