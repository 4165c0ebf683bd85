"""Load generators of `./dev bench`: wrk when installed, else a bounded Python one (threads, keep-alive).

Both return a Load: requests completed, requests per second, p50/p99 latency, and the answers that were not
2xx/3xx plus socket errors. Only loopback TCP (wrk speaks no Unix sockets, so every front is driven over
127.0.0.1 alike).
"""

from __future__ import annotations

import http.client
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50: float  # seconds
    p99: float
    non2xx: int  # answers neither 2xx nor 3xx
    errors: int  # connect/read/write errors and timeouts

    @property
    def rps(self) -> float:
        """Good answers (2xx/3xx) per second: a fast 503 is no throughput."""
        return max(0, self.requests - self.non2xx) / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    host_header: str | None = None
    post_bytes: int = 0  # > 0: POST a body of this many bytes


def run(target: Target, connections: int, seconds: float, generator: str) -> Load:
    if generator == "wrk":
        return run_wrk(target, connections, seconds)
    return run_python(target, connections, seconds)


_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> Load:
    """wrk --latency's report."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if not m:
        raise ValueError(f"no request count in wrk's output:\n{out}")
    requests, seconds = int(m.group(1)), float(m.group(2)) * _UNIT[m.group(3)]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    nan = float("nan")  # no request finished within the run (wrk then prints 0us percentiles)
    return Load(requests, seconds, _duration(pct["50"]) if "50" in pct and requests else nan,
                _duration(pct["99"]) if "99" in pct and requests else nan, int(non2xx.group(1)) if non2xx else 0,
                sum(int(g) for g in errors.groups()) if errors else 0)


def run_wrk(target: Target, connections: int, seconds: float) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if target.host_header:
        argv += ["-H", f"Host: {target.host_header}"]
    with tempfile.TemporaryDirectory(prefix="phb-wrk-") as tmp:
        if target.post_bytes:
            script = Path(tmp) / "post.lua"
            script.write_text(f'wrk.method = "POST"\nwrk.body = string.rep("a", {target.post_bytes})\n'
                              'wrk.headers["Content-Type"] = "application/octet-stream"\n')
            argv += ["-s", str(script)]
        argv.append(f"http://127.0.0.1:{target.port}{target.path}")
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def run_python(target: Target, connections: int, seconds: float, max_requests: int = 1_000_000) -> Load:
    """``connections`` threads, each on one keep-alive connection, until ``seconds`` or ``max_requests``."""
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0, "done": 0}
    body = b"a" * target.post_bytes
    headers = {"Host": target.host_header} if target.host_header else {}
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        mine: list[float] = []
        bad = errs = 0
        try:
            while time.monotonic() < deadline and counts["done"] < max_requests:
                t0 = time.perf_counter()
                try:
                    conn.request("POST" if body else "GET", target.path, body=body or None, headers=headers)
                    r = conn.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    errs += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
                    continue
                mine.append(time.perf_counter() - t0)
                bad += not 200 <= r.status < 400
                with lock:
                    counts["done"] += 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                counts["non2xx"] += bad
                counts["errors"] += errs

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    took = time.perf_counter() - t0
    if not latencies:
        return Load(0, took, float("nan"), float("nan"), counts["non2xx"], counts["errors"])
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return Load(len(latencies), took, statistics.median(latencies), q[98], counts["non2xx"], counts["errors"])
