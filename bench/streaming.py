"""Streaming benchmark: the latency each server-sent event gains through the host vs straight from the plugin.

    .venv/bin/python bench/streaming.py [--events 500]

The sse fixture plugin sends event n+1 only once event n is acknowledged. The acknowledgement always goes
straight to the plugin's socket; the event stream is read once from the plugin's socket and once through
the host (path mode and the plugin's own origin). Per event: the time from sending the acknowledgement to
reading the next event; the difference of the medians is what the host adds to each event. Talks only to
127.0.0.1 and Unix sockets; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.harness import FIXTURES, ServedHost, run_host

ROUNDS = 10


def event_gaps(stream_client: httpx.Client, base: str, ack: httpx.Client, events: int, budget: float) -> list[float]:
    """Seconds from each acknowledgement to the next event's arrival, for up to ``events`` events."""
    stream = uuid.uuid4().hex
    gaps: list[float] = []
    sent = 0.0
    deadline = time.monotonic() + budget
    with stream_client.stream("GET", f"{base}/events/{stream}", params={"n": events, "wait": 10}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            word = line.removeprefix("data: ").split()[0]
            if not word.isdigit():  # "all" (done) or "no" (abandoned)
                break
            if sent:
                gaps.append(now - sent)
            if time.monotonic() > deadline:
                break
            sent = time.perf_counter()
            ack.post(f"/ack/{stream}/{word}")
    return gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ph-bench-", dir="/tmp"))
    home = tmp / "h"
    try:
        run_host(home, "install", str(FIXTURES / "sse"), "--yes", check=True)
        host = ServedHost(home).start(wait_plugins=("sse",))
        sock = home / "run" / "sse" / "http.sock"
        direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://plugin", timeout=30)
        by_path = httpx.Client(base_url=host.url + "/plugins/sse", timeout=30)
        own_origin = host.origin_client("sse")
        runs = {"direct to plugin socket": direct, "through host, by path": by_path,
                "through host, own origin": own_origin}
        for client in runs.values():  # warm up pools, threads and workers
            event_gaps(client, "", direct, 20, 30)
        print(f"== server-sent events, {args.events} acknowledged one by one (acknowledgement -> next event), "
              f"in {ROUNDS} interleaved rounds")
        gaps: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(ROUNDS):  # interleaved, so a change in the machine's load hits every variant alike
            for label, client in runs.items():
                gaps[label] += event_gaps(client, "", direct, args.events // ROUNDS, 60)
        medians = {}
        for label, samples in gaps.items():
            medians[label] = statistics.median(samples)
            p90 = statistics.quantiles(samples, n=10)[-1]
            print(f"{label:<26} median {medians[label] * 1e3:6.3f} ms   p90 {p90 * 1e3:6.3f} ms   "
                  f"({len(samples)} events)")
        base = medians["direct to plugin socket"]
        for label in list(runs)[1:]:
            print(f"added by the host ({label.removeprefix('through host, ')}): {(medians[label] - base) * 1e3:.3f} ms "
                  "per event (median)")
        for client in runs.values():
            client.close()
        host.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
