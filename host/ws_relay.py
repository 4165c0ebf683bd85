"""The byte relay under every proxied WebSocket, and the per-plugin cap on how many may be open.

One selector thread per web-tier process carries every WebSocket that process accepted, so an open socket
holds two file descriptors and a few KiB, never a gunicorn thread: ordinary requests keep every thread. The
relay does not parse frames: what one side sends reaches the other unchanged (extensions and subprotocols
are the client's and the plugin's business). Knows nothing of Flask or HTTP; host.websocket does the
handshake and hands the two connected sockets over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import resource
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
# How often idle links are looked for, and plugins with open links reported in use (the app sends at most one
# report a second per plugin): a scale-to-zero idle timeout must be longer than this to see the reports.
TICK = 1.0
RESERVE_FDS = 256  # descriptors a web worker keeps for ordinary requests, plugin connections, logs


def descriptor_budget() -> int:
    """How many WebSockets this process can relay: two descriptors each, RESERVE_FDS kept for the rest, so
    WebSockets can never make accept() fail for ordinary requests. The soft limit is raised to the hard one
    first (systemd's default soft limit, 1024, would hold a worker to 384)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (soft, resource.RLIM_INFINITY):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(0, (soft - RESERVE_FDS) // 2)


class Ticket:
    """One of a plugin's WebSocket slots; :meth:`release` is idempotent."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Gate:
    """Caps the WebSockets open to each plugin across every web-tier worker process.

    Slot k of plugin P is a lock on one byte (at an offset derived from P's name) of a memfd that the gunicorn
    arbiter creates before it forks the workers. Each worker locks through an open file description of its
    own (Linux OFD locks belong to that description, not the process), so workers conflict with each other;
    within a worker the held slots are remembered. A worker that dies, however it dies, drops its locks with
    its descriptors: no count can leak. Create it in the process that forks the workers (host.webtier); one
    created in a worker caps that worker alone.
    """

    SPAN = 1 << 12  # slots per plugin (manifests: max_websockets <= 4096)
    _FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)

    def __init__(self) -> None:
        self._shared = os.memfd_create("plugin-host-websockets", os.MFD_CLOEXEC)
        self._lock = threading.Lock()
        self._pid = 0
        self._own = -1
        self._held: set[int] = set()

    def acquire(self, name: str, limit: int) -> Ticket | None:
        """A free slot of plugin ``name``, which has ``limit``; None when all are taken."""
        base = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=5).digest(), "big") * self.SPAN
        with self._lock:
            fd = self._descriptor()
            for k in range(min(limit, self.SPAN)):
                offset = base + k
                if offset not in self._held and self._fcntl(fd, fcntl.F_WRLCK, offset):
                    self._held.add(offset)
                    return Ticket(lambda offset=offset: self._release(offset))  # type: ignore[misc]
        return None

    def _release(self, offset: int) -> None:
        with self._lock:
            if offset in self._held:
                self._held.discard(offset)
                self._fcntl(self._descriptor(), fcntl.F_UNLCK, offset)

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # first use in this worker: a description of its own
            self._own = os.open(f"/proc/self/fd/{self._shared}", os.O_RDWR | os.O_CLOEXEC)
            self._pid = os.getpid()
            self._held = set()
        return self._own

    def _fcntl(self, fd: int, kind: int, offset: int) -> bool:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(self._FLOCK, kind, os.SEEK_SET, offset, 1, 0))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True


class _Side:
    """One end of a link: its socket, the bytes waiting to be written to it, and how far it has closed."""

    __slots__ = ("eof", "events", "out", "shut", "sock")

    def __init__(self, sock: socket.socket, out: bytes) -> None:
        self.sock = sock
        self.out = bytearray(out)
        self.eof = False  # it sent EOF
        self.shut = False  # we sent it EOF (after writing everything owed)
        self.events = 0  # what the selector watches it for


class Link:
    """A WebSocket being relayed: the client's connection and the plugin's."""

    def __init__(self, name: str, client: socket.socket, plugin: socket.socket, *, idle: float, ticket: Ticket,
                 to_client: bytes = b"", to_plugin: bytes = b"",
                 closed: Callable[[int, int], None] | None = None) -> None:
        self.name = name
        self.closed = closed  # called once when the link closes: (bytes to the plugin, bytes to the client)
        self.received = 0  # bytes of the client's written to the plugin
        self.sent = -len(to_client)  # bytes written to the client, not counting the handshake's answer
        self.client = _Side(client, to_client)
        self.plugin = _Side(plugin, to_plugin)
        self.idle = idle
        self.ticket = ticket
        self.last = time.monotonic()
        for s in (client, plugin):
            s.setblocking(False)

    def peer(self, side: _Side) -> _Side:
        return self.plugin if side is self.client else self.client


class Relay:
    """The selector thread of this process (started with its first link) and a keeper thread that reports
    plugins with open links as in use, so scale-to-zero never stops a plugin under an open WebSocket."""

    def __init__(self, keep_active: Callable[[str], None]) -> None:
        self._keep_active = keep_active
        self._lock = threading.Lock()
        self._incoming: list[Link] = []
        self._open: Counter[str] = Counter()
        self._links: set[Link] = set()
        # Made with the first link: an app that never relays holds no descriptor and runs no thread.
        self._started = False
        self._budget: int | None = None
        self._sel: selectors.BaseSelector
        self._wake_r: socket.socket
        self._wake_w: socket.socket

    def add(self, link: Link) -> None:
        """Relay ``link`` from now on; its sockets and ticket are the relay's to close and release."""
        with self._lock:
            if not self._started:
                self._started = True
                self._sel = selectors.DefaultSelector()
                self._wake_r, self._wake_w = socket.socketpair()
                for s in (self._wake_r, self._wake_w):
                    s.setblocking(False)
                self._sel.register(self._wake_r, selectors.EVENT_READ, None)
                for target, label in ((self._run, "relay"), (self._keep, "keeper")):
                    threading.Thread(target=target, name=f"websocket-{label}", daemon=True).start()
            self._incoming.append(link)
            self._open[link.name] += 1
        with contextlib.suppress(BlockingIOError):  # a full buffer already holds a wake-up
            self._wake_w.send(b"\0")

    def has_room(self) -> bool:
        """Whether this process has descriptors for one more WebSocket (see :func:`descriptor_budget`)."""
        with self._lock:
            if self._budget is None:
                self._budget = descriptor_budget()
            return sum(self._open.values()) < self._budget

    def open_links(self) -> dict[str, int]:
        with self._lock:
            return {name: n for name, n in self._open.items() if n}

    def _keep(self) -> None:
        while True:
            time.sleep(TICK)
            for name in self.open_links():
                try:
                    self._keep_active(name)
                except Exception:
                    log.exception("cannot report %s in use", name)

    def _run(self) -> None:
        swept = time.monotonic()
        while True:
            try:
                events = self._sel.select(TICK)
            except Exception:  # never let the thread end: every WebSocket of this process depends on it
                log.exception("WebSocket relay: select failed")
                time.sleep(TICK)
                continue
            for key, mask in events:
                link = key.data
                if link is None:
                    self._admit()
                elif link in self._links:  # not closed by an earlier event of this round
                    side = link.client if key.fileobj is link.client.sock else link.plugin
                    try:
                        self._service(link, side, mask)
                    except Exception:
                        log.exception("WebSocket relay for %s failed; closing it", link.name)
                        self._close(link)
            now = time.monotonic()
            if now - swept >= TICK:
                swept = now
                for link in [x for x in self._links if now - x.last > x.idle]:
                    log.info("WebSocket to %s closed after %g s without a byte either way", link.name, link.idle)
                    self._close(link)

    def _admit(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            new, self._incoming = self._incoming, []
        for link in new:
            self._links.add(link)
            try:
                for side in (link.client, link.plugin):
                    self._flush(link, side)
                self._settle(link)
            except Exception as exc:
                log.debug("WebSocket to %s ended at once: %s", link.name, exc)
                self._close(link)

    def _service(self, link: Link, side: _Side, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(link, side)
            if mask & selectors.EVENT_READ:
                self._read(link, side)
        except OSError as exc:  # reset, broken pipe: that side is gone, and with it the WebSocket
            log.debug("WebSocket to %s: %s", link.name, exc)
            self._close(link)
            return
        self._settle(link)

    def _read(self, link: Link, side: _Side) -> None:
        try:
            data = side.sock.recv(CHUNK)
        except BlockingIOError:
            return
        if data:
            link.last = time.monotonic()
            peer = link.peer(side)
            peer.out += data
            self._flush(link, peer)
            return
        side.eof = True
        if side is link.plugin:
            link.ticket.release()  # the plugin is done with it: the slot is free before the client hears so

    def _flush(self, link: Link, side: _Side) -> None:
        while side.out:
            try:
                n = side.sock.send(side.out)
            except BlockingIOError:
                return
            del side.out[:n]
            link.last = time.monotonic()
            if side is link.client:
                link.sent += n
            else:
                link.received += n

    def _settle(self, link: Link) -> None:
        """Pass on EOFs whose data has been written, close a link done both ways, and watch each socket for
        what it needs: read only when what it sent last has reached the other side (so a slow reader slows
        the sender instead of filling our memory), write while bytes are owed to it."""
        for side in (link.client, link.plugin):
            peer = link.peer(side)
            if side.eof and not peer.out and not peer.shut:
                peer.shut = True
                with contextlib.suppress(OSError):
                    peer.sock.shutdown(socket.SHUT_WR)
        if link.client.eof and link.plugin.eof and not link.client.out and not link.plugin.out:
            self._close(link)
            return
        for side in (link.client, link.plugin):
            want = 0
            if not side.eof and not link.peer(side).out:
                want |= selectors.EVENT_READ
            if side.out:
                want |= selectors.EVENT_WRITE
            if want == side.events:
                continue
            if not side.events:
                self._sel.register(side.sock, want, link)
            elif not want:
                self._sel.unregister(side.sock)
            else:
                self._sel.modify(side.sock, want, link)
            side.events = want

    def _close(self, link: Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for side in (link.client, link.plugin):
            if side.events:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(side.sock)
                side.events = 0
            side.sock.close()
        link.ticket.release()
        with self._lock:
            self._open[link.name] -= 1
        if link.closed is not None:
            try:
                link.closed(link.received, max(0, link.sent))
            except Exception:
                log.exception("WebSocket to %s: cannot record its end", link.name)
