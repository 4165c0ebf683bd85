"""Proxy benchmark: latency and throughput through the host vs straight to the plugin's socket, the web
tier's memory while 1 GiB streams through it, a WebSocket echo round trip, and ordinary requests while many
WebSockets are open.

    .venv/bin/python bench/proxy.py [--requests 500] [--gib 1] [--websockets 100]

Prints medians and ratios against a baseline measured in the same run (the plugin's own Unix socket,
no proxy), and what the access log and request metrics add to each request (host.observe, in process).
Talks only to 127.0.0.1 and Unix sockets; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fronts import web_tier_pids
from tests.integration import ws_client
from tests.integration.harness import ServedHost, run_host

MiB = 1024 * 1024
BENCH = Path(__file__).resolve().parent


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


def web_pids(host: ServedHost) -> list[int]:
    assert host.proc is not None
    return sorted(web_tier_pids(host.proc.pid))


def timed(fn: Callable[[], object], n: int, budget: float) -> list[float]:
    samples: list[float] = []
    deadline = time.monotonic() + budget
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    return samples


OBSERVE = """
import os, statistics, sys, tempfile, time
from pathlib import Path
d = Path(tempfile.mkdtemp(prefix="ph-observe-"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d / "m")  # as in the web tier: before prometheus_client loads
(d / "m").mkdir(); (d / "a").mkdir()
from host.access_log import AccessLog
from host.observe import Observer
from host.request_metrics import RequestMetrics, multiprocess_active
assert multiprocess_active()
class R:
    def __init__(self): self.response, self.status_code = [b"x" * 200], 200
n = int(sys.argv[1])
for label, obs in (("neither", Observer(None, None)), ("access log", Observer(AccessLog(d / "a", 5 << 20), None)),
                   ("metrics", Observer(None, RequestMetrics())),
                   ("both", Observer(AccessLog(d / "a", 5 << 20), RequestMetrics()))):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = obs.begin("bench", "GET", "/plugins/bench/ping", "127.0.0.1").watch(R())
        for _chunk in r.response: pass
        r.response.close()
        times.append(time.perf_counter() - t0)
    print(label, statistics.median(times))
"""


def observe_cost(n: int) -> dict[str, float]:
    """Median seconds host.observe spends on one request (its access log line and request series, in
    multiprocess mode as in the web tier), measured in a child process: the proxy's added work per request,
    free of the noise of the network round trips around it."""
    out = subprocess.run([sys.executable, "-c", OBSERVE, str(n)], capture_output=True, text=True, check=True,
                         cwd=BENCH.parent, timeout=120).stdout
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def body(total: int) -> Iterator[bytes]:
    block = b"\xab" * MiB
    left = total
    while left > 0:
        yield block[: min(left, MiB)]
        left -= MiB


def websockets(host: ServedHost, home: Path, n: int, idle: int, ordinary: httpx.Client) -> None:
    """A small WebSocket message's round trip through the host vs straight to the plugin's socket; then
    ordinary requests to another plugin, with and without ``idle`` WebSockets open through the host."""
    direct = ws_client.connect(str(home / "run" / "wsecho" / "http.sock"), "/echo").ws
    proxied = ws_client.connect(("127.0.0.1", host.port), "/plugins/wsecho/echo").ws
    assert direct is not None and proxied is not None

    def round_trip(ws: ws_client.WebSocket) -> None:
        ws.send(b"x" * 32)
        ws.recv()

    for ws in (direct, proxied):
        for _ in range(20):
            round_trip(ws)
    print(f"== WebSocket echo, 32-byte message, {n} sequential round trips (median)")
    md = statistics.median(timed(lambda: round_trip(direct), n, 60))
    mp = statistics.median(timed(lambda: round_trip(proxied), n, 60))
    print(f"direct to plugin socket: {md * 1e3:7.3f} ms   through host: {mp * 1e3:7.3f} ms   "
          f"ratio {mp / md:5.2f}x   (relay overhead {1e3 * (mp - md):.3f} ms)")
    for ws in (direct, proxied):
        ws.close()

    def ping() -> None:
        assert ordinary.get("/ping", timeout=10).status_code == 200

    print(f"== ordinary GET to another plugin, {n} sequential, while {idle} idle WebSockets are open "
          "(1 web worker, 32 threads)")
    before = statistics.median(timed(ping, n, 60))
    held = []
    t0 = time.perf_counter()
    for _ in range(idle):
        answer = ws_client.connect(("127.0.0.1", host.port), "/plugins/wsecho/echo")
        assert answer.ws is not None, (answer.status, answer.body)
        held.append(answer.ws)
    opened = time.perf_counter() - t0
    during = statistics.median(timed(ping, n, 60))
    for ws in held:  # every one of them still answers
        round_trip(ws)
    print(f"opened {idle} in {opened:.2f} s; GET median {before * 1e3:.2f} ms with none open, "
          f"{during * 1e3:.2f} ms with {idle} open; web tier RSS {rss_kib(web_pids(host)) / 1024:.1f} MiB")
    for ws in held:
        ws.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--websockets", type=int, default=100, help="idle WebSockets held open (the web tier has 32 "
                    "threads)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ph-bench-", dir="/tmp"))
    home = tmp / "h"
    try:
        for plugin in ("bulk", "wsecho"):
            run_host(home, "install", str(BENCH / "plugins" / plugin), "--yes", check=True)
        host = ServedHost(home).start(wait_plugins=("bulk", "wsecho"))
        sock = home / "run" / "bulk" / "http.sock"
        direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://plugin", timeout=600)
        proxied = httpx.Client(base_url=host.url + "/plugins/bulk", timeout=600)
        for c in (direct, proxied):  # warm up pools and workers
            for _ in range(20):
                c.get("/ping")

        print(f"== small GET, {args.requests} sequential requests (median latency)")
        d = timed(lambda: direct.get("/ping"), args.requests, 60)
        p = timed(lambda: proxied.get("/ping"), args.requests, 60)
        md, mp = statistics.median(d), statistics.median(p)
        print(f"direct to plugin socket: {md * 1e3:7.2f} ms   through host: {mp * 1e3:7.2f} ms   "
              f"ratio {mp / md:5.2f}x   (proxy overhead {1e3 * (mp - md):.2f} ms)")
        cost = observe_cost(args.requests)
        added = cost["both"] - cost["neither"]
        print(f"== access log + request metrics, per request (median of {args.requests}, in process)")
        print("   ".join(f"{k}: {v * 1e6:6.1f} us" for k, v in cost.items())
              + f"   added {added * 1e6:.1f} us = {100 * added / mp:.2f}% of the proxied GET above "
              "(HOST_ACCESS_LOG=false HOST_REQUEST_METRICS=false turn them off)")

        size = int(args.gib * 1024 * MiB)
        print(f"== streaming {size // MiB} MiB each way")
        pids = web_pids(host)
        before = rss_kib(pids)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                peak[0] = max(peak[0], rss_kib(pids))

        t = threading.Thread(target=sample, daemon=True)
        t.start()

        def download(c: httpx.Client) -> float:
            t0 = time.perf_counter()
            n = 0
            with c.stream("GET", f"/bytes/{size}") as r:
                for chunk in r.iter_raw(1 << 16):
                    n += len(chunk)
            assert n == size, n
            return time.perf_counter() - t0

        def upload(c: httpx.Client) -> float:
            t0 = time.perf_counter()
            r = c.post("/sink", content=body(size), headers={"Content-Length": str(size)})
            assert r.json()["length"] == size, r.text
            return time.perf_counter() - t0

        dd, dp = download(direct), download(proxied)
        ud, up = upload(direct), upload(proxied)
        stop.set()
        t.join()
        mib = size / MiB
        print(f"download: direct {mib / dd:7.0f} MiB/s   through host {mib / dp:7.0f} MiB/s   ratio {dp / dd:5.2f}x")
        print(f"upload:   direct {mib / ud:7.0f} MiB/s   through host {mib / up:7.0f} MiB/s   ratio {up / ud:5.2f}x")
        print(f"web tier RSS: {before / 1024:.1f} MiB before, {peak[0] / 1024:.1f} MiB peak while streaming "
              f"{2 * mib:.0f} MiB (+{(peak[0] - before) / 1024:.1f} MiB)")
        websockets(host, home, args.requests, args.websockets, proxied)
        host.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
