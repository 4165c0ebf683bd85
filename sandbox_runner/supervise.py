"""The outer stage's wait loop: forward signals to the sandboxed process, collect its report, reap it.

Signal handlers do nothing but wake the loop (via ``signal.set_wakeup_fd``); the loop does the work. Imported by
the outer runner stage: no dataclasses or typing (start-up time of every plugin; see sandbox_runner.inner).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# What a supervisor or terminal may send that the command (gunicorn's arbiter) acts on.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGWINCH,
)


@contextlib.contextmanager
def wakeup() -> Iterator[int]:
    """Install the no-op handlers and yield the fd that becomes readable with each signal number."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_fd = signal.set_wakeup_fd(w)
    old = {s: signal.signal(s, lambda *_: None) for s in FORWARDED}
    try:
        yield r
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(r)
        os.close(w)


def reset_in_child() -> None:
    """In a forked child: undo :func:`wakeup` so the child starts with default dispositions."""
    signal.set_wakeup_fd(-1)
    for s in FORWARDED:
        signal.signal(s, signal.SIG_DFL)


class Child:
    __slots__ = ("on_eof", "pid", "received", "streams", "target")

    def __init__(self, pid: int, target: int | None, streams: dict[int, bytearray] | None = None,
                 on_eof: dict[int, Callable[[bytes], None]] | None = None) -> None:
        self.pid = pid  # our direct child (bwrap, or the forked inner stage)
        self.target = target  # who gets forwarded signals; None until bwrap reports it
        self.streams = streams if streams is not None else {}  # fd -> bytes read so far (until EOF)
        self.on_eof = on_eof if on_eof is not None else {}
        self.received: list[int] = []  # the signals we were sent (and forwarded), in order


def wait(child: Child, wake_fd: int) -> int:
    """Forward signals until ``child.pid`` exits; returns its wait status."""
    pidfd = os.pidfd_open(child.pid)
    pending: list[int] = []
    try:
        while True:
            rlist = [wake_fd, pidfd, *child.streams]
            ready, _, _ = select.select(rlist, [], [])
            if wake_fd in ready:
                with contextlib.suppress(BlockingIOError):
                    got = list(os.read(wake_fd, 256))
                    pending += got
                    child.received += [s for s in got if s not in child.received]
            for fd in [fd for fd in ready if fd in child.streams]:
                data = os.read(fd, 65536)
                if data:
                    child.streams[fd] += data
                else:
                    _close_stream(child, fd)
            if child.target is not None:
                for sig in pending:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.target, sig)
                pending.clear()
            if pidfd in ready:
                _, status = os.waitpid(child.pid, 0)
                for fd in list(child.streams):
                    _drain(child, fd)
                return status
    finally:
        os.close(pidfd)


def _drain(child: Child, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.set_blocking(fd, False)
        while data := os.read(fd, 65536):
            child.streams[fd] += data
    _close_stream(child, fd)


def _close_stream(child: Child, fd: int) -> None:
    data = bytes(child.streams.pop(fd))
    os.close(fd)
    callback = child.on_eof.pop(fd, None)
    if callback is not None:
        callback(data)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def first_child(pid: int) -> int | None:
    kids = children(pid)
    return kids[0] if kids else None


def reap_orphans() -> None:
    """As a child subreaper, SIGKILL and reap every remaining descendant (daemonised leftovers)."""
    me = os.getpid()
    while True:
        kids = children(me)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # our own child: its pid cannot be reused before we reap it
        try:
            pid, _ = os.waitpid(-1, 0 if kids else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0 and not kids:
            return
