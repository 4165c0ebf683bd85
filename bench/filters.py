"""request.before benchmark: the latency a filter adds to each proxied request, through a real `host serve`.

    .venv/bin/python bench/filters.py [--requests 300]

Installs the bundled inbox (the target) and gatekeeper (a request.before filter), then times sequential GETs
of /plugins/inbox/headers.json with the gatekeeper disabled (no filter published: the web tier pays one
stat), enabled (one signed call to the filter's socket per request), and disabled again, all in the same
run. Prints medians, p90 and the ratio and difference to no filter; the signed filter call alone (straight
to the gatekeeper's socket); and, in process, what the web tier's hook gate costs per request when no
filter is registered. Talks only to 127.0.0.1 and Unix sockets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host.hooks.filters import call
from host.hooks.request_filter import RequestFilters
from host.hooks.table import FilterTable
from tests.integration.harness import BUNDLED, ServedHost, run_host, short_home

URL = "/plugins/inbox/headers.json"


def timed(client: httpx.Client, n: int, tagged: bool) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(URL)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        assert ("X-Filter-Gatekeeper" in r.json()) is tagged, r.json()
    return out


def show(label: str, xs: list[float], base: float | None) -> float:
    med = statistics.median(xs)
    p90 = statistics.quantiles(xs, n=10)[-1]
    extra = f"  x{med / base:.2f}  (+{(med - base) * 1000:.2f} ms)" if base else ""
    print(f"{label:<28} median {med * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms{extra}")
    return med


def gate_cost(n: int = 100_000) -> float:
    """Seconds per RequestFilters.gate call with an empty table (what every request pays without filters)."""
    with tempfile.TemporaryDirectory() as d:
        table = Path(d) / "hooks.json"
        table.write_text('{"format": 1, "filters": {}}')
        gate = RequestFilters(table)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "RAW_URI": "/plugins/notes/x"}
        t0 = time.perf_counter()
        for _ in range(n):
            gate.gate(environ, "notes", "x")
        return (time.perf_counter() - t0) / n


def filter_calls(home: Path, n: int) -> list[float]:
    """The signed call alone, straight to the gatekeeper's socket (what the web tier does per request)."""
    (ref,) = FilterTable(home / "run" / "hooks.json").at("request.before")
    payload = json.dumps({"point": "request.before", "data": {"plugin": "inbox", "method": "GET", "path": URL,
                                                              "query": "", "client": "127.0.0.1",
                                                              "headers": {}}}).encode()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        verdict = call(ref, payload)
        out.append(time.perf_counter() - t0)
        assert verdict["action"] == "allow", verdict
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    with short_home() as home:
        run_host(home, "install", str(BUNDLED / "inbox"), "--yes", check=True)
        run_host(home, "install", str(BUNDLED / "gatekeeper"), "--yes", "--no-enable", check=True)
        host = ServedHost(home).start(wait_plugins=("inbox",))
        try:
            with httpx.Client(base_url=host.url, timeout=10) as client:
                timed(client, 20, tagged=False)  # warm up the pool and the plugin
                before = timed(client, args.requests, tagged=False)
                host.cli("enable", "gatekeeper")
                host.wait_state("gatekeeper", "running")
                deadline = time.monotonic() + 10  # the table is republished within a supervisor tick
                while "X-Filter-Gatekeeper" not in client.get(URL).json() and time.monotonic() < deadline:
                    time.sleep(0.1)
                timed(client, 20, tagged=True)
                filtered = timed(client, args.requests, tagged=True)
                direct = filter_calls(home, args.requests)
                host.cli("disable", "gatekeeper")
                deadline = time.monotonic() + 10
                while "X-Filter-Gatekeeper" in client.get(URL).json() and time.monotonic() < deadline:
                    time.sleep(0.1)
                after = timed(client, args.requests, tagged=False)
        finally:
            host.stop()
    print(f"{args.requests} sequential GET {URL} per row, same run")
    base = show("no filter (before)", before, None)
    show("request.before: gatekeeper", filtered, base)
    show("no filter (after)", after, base)
    show("one filter call, no proxy", direct, None)
    print(f"web tier hook gate, no filter registered: {gate_cost() * 1e6:.2f} µs per request (in process)")


if __name__ == "__main__":
    main()
