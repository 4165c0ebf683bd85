"""A plugin that hangs on every request cannot take the web tier's threads from the other plugins."""

from __future__ import annotations

import threading
import time

import httpx

from tests.integration.harness import BUNDLED, FIXTURES, served_plugins


def test_hung_plugin_gets_503_busy_and_never_starves_the_others() -> None:
    # one web worker with 4 threads: at most 2 may wait on one plugin
    with served_plugins(BUNDLED / "example_plugin", FIXTURES / "echo", wait=("example", "echo"),
                        env={"HOST_WEB_THREADS": "4"}) as host:
        slow: list[int] = []
        held_until: list[float] = []  # when each hog that got a thread was answered

        def hog() -> None:
            status = httpx.get(host.url + "/plugins/echo/sleep/2.5", timeout=30).status_code
            slow.append(status)
            if status == 200:
                held_until.append(time.monotonic())

        hogs = [threading.Thread(target=hog) for _ in range(6)]
        for t in hogs:
            t.start()
        time.sleep(0.5)  # the hogs hold their slots now
        first = httpx.get(host.url + "/plugins/example/example", timeout=30)
        answered = time.monotonic()
        fast = [first] + [httpx.get(host.url + "/plugins/example/example", timeout=30) for _ in range(9)]
        for t in hogs:
            t.join(30)
        assert [r.status_code for r in fast] == [200] * 10
        assert sorted(slow) == [200, 200, 503, 503, 503, 503]
        # Ordering, not a stopwatch (a loaded machine makes every request slow): the healthy plugin was
        # answered while the hung one still held every slot it may hold, so it never waited for one of them.
        assert answered < min(held_until), "a request to a healthy plugin waited behind a slow one"
