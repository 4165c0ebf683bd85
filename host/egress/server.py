"""The egress process: accepts on listeners inside plugins' network namespaces, decides, connects, relays.

Started as ``python -m host.egress --control-fd N [--uid U --gid G]``; it drops to the unprivileged uid
before touching any plugin byte. The control socket (SOCK_SEQPACKET, from whoever started it) carries
registrations with their listening sockets as SCM_RIGHTS, and carries refusal events back.

Listener kinds: ``proxy`` speaks HTTP proxy (``CONNECT host:port`` for TLS and anything else; absolute-form
``GET http://...`` for plain HTTP), which is what HTTP(S)_PROXY-aware clients (requests, httpx, urllib, pip)
use; ``fixed`` forwards a plain TCP connection to one granted ``host:port`` (transparent for clients that
know nothing of proxies).
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - getaddrinfo of a non-ASCII name imports it, after the uid drop
import ipaddress
import json
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from host.egress.rules import Address, Decision, Grant, decide, local_addresses

log = logging.getLogger(__name__)
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
MAX_CONNECTIONS = 256  # per plugin, at once
BUF = 64 * 1024


@dataclass
class Plugin:
    name: str
    grant: Grant
    listeners: list[socket.socket] = field(default_factory=list)
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_CONNECTIONS))


class Egress:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.plugins: dict[str, Plugin] = {}
        self._send_lock = threading.Lock()
        self.local = local_addresses()

    # -- control ----------------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 64)
            except OSError:
                return
            if not msg:
                return  # the supervisor is gone: so are we
            try:
                self.apply(json.loads(msg), fds)
            except Exception:  # a bad message must not take egress down for every plugin
                log.exception("egress: bad control message")
                for fd in fds:
                    os.close(fd)

    def apply(self, req: dict[str, Any], fds: list[int]) -> None:
        name = str(req["plugin"])
        old = self.plugins.pop(name, None)
        if old is not None:
            # The listeners are retired everywhere (shutdown acts on the socket, not on our fd): this also
            # wakes the accept threads, which would otherwise go on serving with the old grant.
            for s in old.listeners:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        if req["op"] == "remove":
            return
        plugin = Plugin(name, Grant.from_json(req["grant"]))
        for spec, fd in zip(req["listeners"], fds, strict=True):
            sock = socket.socket(fileno=fd)
            plugin.listeners.append(sock)
            fixed = (str(spec["host"]), int(spec["port"])) if spec["kind"] == "fixed" else None
            threading.Thread(target=self._accept, args=(plugin, sock, fixed), daemon=True,
                             name=f"egress-{name}").start()
        self.plugins[name] = plugin
        self.local = local_addresses()  # addresses may have changed since start

    def event(self, **data: Any) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.control.send(json.dumps(data).encode())

    # -- data path --------------------------------------------------------------------------------------

    def _accept(self, plugin: Plugin, listener: socket.socket, fixed: tuple[str, int] | None) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by remove/re-register
            if not plugin.slots.acquire(blocking=False):
                self.refuse(plugin, "*", f"more than {MAX_CONNECTIONS} connections at once")
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(plugin, conn, fixed), daemon=True).start()

    def _handle(self, plugin: Plugin, conn: socket.socket, fixed: tuple[str, int] | None) -> None:
        try:
            if fixed is not None:
                up, _why = self.open(plugin, *fixed)
                if up is not None:
                    relay(conn, up, b"")
            else:
                self.proxy(plugin, conn)
        except OSError:
            pass
        finally:
            conn.close()
            plugin.slots.release()

    def open(self, plugin: Plugin, host: str, port: int) -> tuple[socket.socket | None, str]:
        """(connected socket, "") or (None, why not)."""
        d = decide(plugin.grant, host, port, resolve, self.local)
        dest = f"{host}:{port}"
        if not d.allowed or d.address is None:
            self.refuse(plugin, dest, d.reason)
            return None, f"refused: {d.reason}"
        try:
            return connect(d, port), ""
        except OSError as exc:
            log.info("egress %s -> %s (%s): %s", plugin.name, dest, d.address, exc)
            return None, f"cannot connect to {d.address}: {exc.strerror or exc}"

    def refuse(self, plugin: Plugin, dest: str, reason: str) -> None:
        log.warning("egress refused: plugin %s -> %s: %s", plugin.name, dest, reason)
        self.event(event="refused", plugin=plugin.name, dest=dest, reason=reason, at=time.time())

    def proxy(self, plugin: Plugin, conn: socket.socket) -> None:
        conn.settimeout(HEAD_TIMEOUT)
        head, rest = read_head(conn)
        if head is None:
            return reply(conn, 400, "malformed proxy request")
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return reply(conn, 400, "malformed request line")
        if method == "CONNECT":
            host, port = split_hostport(target, None)
            if host is None or port is None:
                return reply(conn, 400, "CONNECT needs host:port")
            up, why = self.open(plugin, host, port)
            if up is None:
                return reply(conn, 403 if why.startswith("refused") else 502, f"{target}: {why}")
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return relay(conn, up, rest)
        if not target.lower().startswith("http://"):
            return reply(conn, 400, "only CONNECT and absolute http:// requests go through this proxy")
        authority, _, path = target[7:].partition("/")
        host, port = split_hostport(authority, 80)
        if host is None or port is None:
            return reply(conn, 400, "bad host in request target")
        up, why = self.open(plugin, host, port)
        if up is None:
            return reply(conn, 403 if why.startswith("refused") else 502, f"{host}:{port}: {why}")
        # One request per proxy connection: the next one may be for another host.
        headers = [h for h in lines[1:] if h and not h.lower().startswith((b"proxy-", b"connection:", b"keep-alive:"))]
        out = b"\r\n".join([f"{method} /{path} {version}".encode(), *headers, b"Connection: close", b"", b""])
        up.sendall(out)
        return relay(conn, up, rest)


def resolve(name: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))


def connect(d: Decision, port: int) -> socket.socket:
    """Connect to the checked address (never re-resolving the name), trying the other checked ones next."""
    err: OSError | None = None
    for addr in (d.address, *[a for a in d.candidates if a != d.address]):
        if addr is None:
            continue
        fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect((str(addr), port))
            return s
        except OSError as exc:
            s.close()
            err = exc
    raise err or OSError("no address")


def split_hostport(text: str, default: int | None) -> tuple[str | None, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        return None, None
    if not port_text:
        return host, default
    return (host, int(port_text)) if port_text.isdigit() else (None, None)


def read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > HEAD_LIMIT:
            return None, b""
        chunk = conn.recv(4096)
        if not chunk:
            return None, b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def reply(conn: socket.socket, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = f"plugin-host egress: {text}\n".encode()
    with contextlib.suppress(OSError):
        conn.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)


def relay(a: socket.socket, b: socket.socket, first: bytes) -> None:
    """Copy bytes both ways until both sides are done (or idle for IDLE_TIMEOUT); half-closes pass through."""
    try:
        a.setblocking(True)
        b.setblocking(True)
        if first:
            b.sendall(first)
        open_ = {a: b, b: a}
        while open_:
            ready, _, _ = select.select(list(open_), [], [], IDLE_TIMEOUT)
            if not ready:
                return
            for src in ready:
                dst = open_[src]
                data = src.recv(BUF)
                if data:
                    dst.sendall(data)
                else:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    del open_[src]
    except OSError:
        return
    finally:
        b.close()
