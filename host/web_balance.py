"""Connections spread evenly over the public web tier's gevent workers.

Every worker accepts from the one listening socket the supervisor bound, and the kernel wakes them all for
each new connection: whichever gets there first takes it. Keep-alive connections stay with the worker that
accepted them, so one worker could hold most of them and run hot while another idled (issue 12 saw 86 % and
28 %; here 7 of 8 connections on one of two workers). Here each worker counts its open connections in a
page the arbiter shares with all of them, and one that holds more than one connection above the least busy
live worker stops accepting until that is no longer so (its pool reports itself full, which is how gevent's
server pauses accepting; a worker rechecks every RECHECK seconds, and at once when one of its connections
ends). The least busy worker never pauses, so a new connection always has a taker.

Used when the public tier runs more than one gevent worker (host.webtier); with one there is nothing to
spread.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any

import gevent
from gunicorn.workers import ggevent

MAX_WORKERS = 64  # HostSettings.web_workers' bound
SLOTS = 2 * MAX_WORKERS  # a reload (SIGHUP) starts the new workers before the old ones go
RECHECK = 0.05  # seconds between a paused worker's looks at the others' counts


class Counts:
    """Per worker slot: the pid holding it (0: free) and its open connections, in shared anonymous memory.

    Each slot is written by one process at a time: its worker (its own count), the arbiter before the fork
    and after the worker died. Others only read; an aligned 8-byte store is atomic."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * 16)  # MAP_SHARED: the workers forked later see the same page
        self._cells = (ctypes.c_int64 * (slots * 2)).from_buffer(self._mem)

    def claim(self, slot: int, pid: int) -> None:
        self._cells[2 * slot + 1] = 0
        self._cells[2 * slot] = pid

    def free(self, slot: int) -> None:
        self._cells[2 * slot] = 0
        self._cells[2 * slot + 1] = 0

    def add(self, slot: int, n: int) -> None:
        self._cells[2 * slot + 1] += n

    def connections(self, slot: int) -> int:
        return int(self._cells[2 * slot + 1])

    def over_share(self, slot: int) -> bool:
        """Whether ``slot``'s worker holds more than one connection above the least busy other live one."""
        cells = self._cells
        mine = cells[2 * slot + 1]
        least = min((cells[2 * i + 1] for i in range(self.slots) if i != slot and cells[2 * i]), default=None)
        return least is not None and mine > least + 1


def free_slot(workers: Any, slots: int) -> int:
    """A slot no live worker (gunicorn's ``server.WORKERS`` values) holds (never more than SLOTS are alive;
    were they, slot 0 would be shared, which only blurs the counts)."""
    taken = {getattr(w, "balance_slot", -1) for w in workers}
    return next((i for i in range(slots) if i not in taken), 0)


class BalancedGeventWorker(ggevent.GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, accepting only while it holds no more than its share of connections.

    ``counts`` is set on the class by the arbiter (host.webtier) before it forks any worker; ``balance_slot``
    on each worker by the ``pre_fork`` hook (:func:`pre_fork`)."""

    counts: Counts
    balance_slot = 0

    def run(self) -> None:
        worker = self
        servers: list[Any] = []

        class Pool(ggevent.Pool):  # type: ignore[misc]
            def full(self) -> bool:
                return bool(super().full()) or worker.counts.over_share(worker.balance_slot)

        class StreamServer(ggevent.StreamServer):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                servers.append(self)

        # This worker's own copy of the module (a process of its own): run() builds its servers with these.
        ggevent.Pool, ggevent.StreamServer = Pool, StreamServer
        gevent.spawn(self._recheck, servers)
        super().run()

    def _recheck(self, servers: list[Any]) -> None:
        """Resume accepting once this worker is back within its share (others took connections meanwhile)."""
        while self.alive:
            gevent.sleep(RECHECK)
            for server in servers:
                if server.started and not server.full():
                    server.start_accepting()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.counts.add(self.balance_slot, 1)
        try:
            super().handle(listener, client, addr)
        finally:
            self.counts.add(self.balance_slot, -1)


def pre_fork(server: Any, worker: Any) -> None:
    """Arbiter: give the worker about to be forked a slot no live worker holds."""
    worker.balance_slot = free_slot(server.WORKERS.values(), BalancedGeventWorker.counts.slots)


def post_fork(server: Any, worker: Any) -> None:
    """The new worker: take the slot, with no connections yet."""
    BalancedGeventWorker.counts.claim(worker.balance_slot, os.getpid())


def child_exit(server: Any, worker: Any) -> None:
    """Arbiter: a worker is gone, and so are its connections."""
    BalancedGeventWorker.counts.free(worker.balance_slot)
