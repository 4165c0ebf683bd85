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

        def hog() -> None:
            slow.append(httpx.get(host.url + "/plugins/echo/sleep/2.5", timeout=30).status_code)

        hogs = [threading.Thread(target=hog) for _ in range(6)]
        for t in hogs:
            t.start()
        time.sleep(0.5)  # the hogs hold their slots now
        t0 = time.monotonic()
        fast = [httpx.get(host.url + "/plugins/example/example", timeout=30) for _ in range(10)]
        elapsed = time.monotonic() - t0
        for t in hogs:
            t.join(30)
        assert [r.status_code for r in fast] == [200] * 10
        assert elapsed < 2.0, f"requests to a healthy plugin waited {elapsed:.1f}s behind a slow one"
        assert sorted(slow) == [200, 200, 503, 503, 503, 503]
