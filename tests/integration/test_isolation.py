"""A plugin that hangs on every request cannot take the web tier's capacity from the other plugins: a burst waits
in line up to a bound, and beyond it gets 503 at once."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import BUNDLED, FIXTURES, ServedHost, run_host, short_home


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """example and echo, installed once: each test serves them with a host of its own (the settings below are
    read by `host serve`, not by the install)."""
    with short_home() as home:
        for src in (BUNDLED / "example_plugin", FIXTURES / "echo"):
            run_host(home, "install", str(src), "--yes", check=True)
        yield home


@contextmanager
def serving(home: Path, env: dict[str, str]) -> Iterator[ServedHost]:
    host = ServedHost(home, env=env).start(wait_plugins=("example", "echo"))
    try:
        yield host
    finally:
        host.stop()


@pytest.mark.parametrize("worker", ["gthread", "gevent"])
def test_a_burst_waits_in_line_a_full_line_gets_503_and_the_other_plugins_never_wait(worker: str,
                                                                                     installed: Path) -> None:
    # one web worker; echo may have 2 requests in flight and 2 more waiting for them
    with serving(installed, {"HOST_PLUGIN_MAX_INFLIGHT": "2", "HOST_PLUGIN_QUEUE": "2",
                             "HOST_WEB_WORKER_CLASS": worker}) as host:
        slow: list[httpx.Response] = []
        held_until: list[float] = []  # when each hog that got a slot was answered

        def hog() -> None:
            r = httpx.get(host.url + "/plugins/echo/sleep/2.5", timeout=30)
            slow.append(r)
            if r.status_code == 200:
                held_until.append(time.monotonic())

        hogs = [threading.Thread(target=hog) for _ in range(6)]
        for t in hogs:
            t.start()
        time.sleep(0.5)  # the hogs hold their slots and places in line now
        first = httpx.get(host.url + "/plugins/example/example", timeout=30)
        answered = time.monotonic()
        fast = [first] + [httpx.get(host.url + "/plugins/example/example", timeout=30) for _ in range(9)]
        for t in hogs:
            t.join(30)
        assert [r.status_code for r in fast] == [200] * 10
        # two served at once, two after waiting for them (not refused), the two beyond the line refused
        assert sorted(r.status_code for r in slow) == [200, 200, 200, 200, 503, 503]
        refused = [r for r in slow if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and r.json()["detail"] ==
                   "plugin 'echo' has 2 requests in flight and 2 waiting already" for r in refused)
        # Ordering, not a stopwatch (a loaded machine makes every request slow): the healthy plugin was
        # answered while the hung one still held every slot it may hold, so it never waited for one of them.
        assert answered < min(held_until), "a request to a healthy plugin waited behind a slow one"


def test_a_burst_far_beyond_what_a_plugin_serves_at_once_waits_and_is_all_answered(installed: Path) -> None:
    # The default settings (one web worker here): 60 requests at once to a plugin that serves 4 at a time,
    # 50 ms each, all waiting well within its 3 s timeout. With the old default (32 threads: 16 in flight +
    # 8 waiting per plugin) the 25th and later concurrent requests got 503 at once.
    with serving(installed, {}) as host:
        conns = [http.client.HTTPConnection("127.0.0.1", host.port, timeout=60) for _ in range(60)]
        for c in conns:
            c.connect()  # all connected first, so the requests arrive together
        barrier = threading.Barrier(len(conns), timeout=30)
        statuses: list[int] = []

        def one(conn: http.client.HTTPConnection) -> None:
            barrier.wait()
            conn.request("GET", "/plugins/echo/sleep/0.05")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
            conn.close()

        clients = [threading.Thread(target=one, args=(c,)) for c in conns]
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
        assert statuses == [200] * len(conns)
