"""The data-path tests of `./dev bench`, contenders alternated round by round (the order rotates each round,
so a change in the machine's load hits every contender alike): loads driven by wrk (or the Python
generator), server-sent event latency, WebSocket echo round trips, and the CPU time each front spends.

Samples are appended to ``results[test][contender]``, one per round; the report takes medians.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import httpx

from bench import loadgen
from bench.fronts import Front
from tests.integration import ws_client

MiB = 1 << 20
TICK = 1 / 100  # USER_HZ: /proc/<pid>/stat counts CPU time in these

Samples = dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class LoadTest:
    key: str
    path: str
    connections: int
    post_bytes: int = 0
    min_seconds: float = 0.5  # 256 connections on a slow front: a 1 s run may see no request finish


LOADS = (
    LoadTest("tiny GET c1", "/ping", 1),
    LoadTest("tiny GET c8", "/ping", 8),
    LoadTest("tiny GET c32", "/ping", 32),
    LoadTest("tiny GET c256", "/ping", 256, min_seconds=3.0),
    LoadTest("1 MiB GET c8", f"/bytes/{MiB}", 8),
    LoadTest("1 MiB POST c8", "/sink", 8, MiB),
)


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (the process's threads included)
    return total * TICK


def run_load(front: Front, test: LoadTest, seconds: float, generator: str, out: Samples) -> None:
    pids = front.pids()
    cpu0 = cpu_seconds(pids)
    load = loadgen.run(loadgen.Target(front.port, front.prefix + test.path, front.host_header, test.post_bytes),
                       test.connections, max(seconds, test.min_seconds), generator)
    cpu = cpu_seconds(pids | front.pids()) - cpu0
    out[f"{test.key} req/s"][front.name].append(load.rps)
    out[f"{test.key} p50 ms"][front.name].append(load.p50 * 1e3)
    out[f"{test.key} non-2xx"][front.name].append(load.non2xx + load.errors)
    if load.requests:
        out[f"{test.key} CPU us/req"][front.name].append(cpu / load.requests * 1e6)


def sse_gaps(front: Front, events: int, budget: float = 30) -> list[float]:
    """Seconds from each acknowledgement (sent straight to the app's socket) to the next event's arrival
    through the front."""
    stream = uuid.uuid4().hex
    gaps: list[float] = []
    sent = 0.0
    deadline = time.monotonic() + budget
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(front.backend)), base_url="http://app",
                      timeout=10) as ack, httpx.Client(headers=front.headers(), timeout=15) as client, \
            client.stream("GET", front.url(f"/events/{stream}"), params={"n": events, "wait": 10},
                          headers={"Accept": "text/event-stream"}) as r:  # as EventSource sends it
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            word = line.removeprefix("data: ")
            if not word.isdigit():  # "done", or "abandoned": the front held an event back for 10 s
                break
            if sent:
                gaps.append(now - sent)
            if time.monotonic() > deadline:
                break
            sent = time.perf_counter()
            ack.post(f"/ack/{stream}/{word}")
    return gaps


def ws_round_trips(front: Front, n: int, budget: float = 30) -> list[float]:
    answer = ws_client.connect(("127.0.0.1", front.port), front.prefix + "/echo", host=front.host_header)
    if answer.ws is None:
        raise RuntimeError(f"{front.name}: WebSocket refused with {answer.status}: {answer.body[:200]!r}")
    ws = answer.ws
    out: list[float] = []
    deadline = time.monotonic() + budget
    try:
        for i in range(n + 5):
            t0 = time.perf_counter()
            ws.send(b"x" * 32)
            ws.recv()
            if i >= 5:  # the first few warm up
                out.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
    finally:
        ws.close()
    return out


def warm_up(fronts: list[Front]) -> None:
    for front in fronts:
        with httpx.Client(headers=front.headers(), timeout=30) as c:
            for _ in range(20):
                r = c.get(front.url("/ping"))
                if r.status_code != 200:
                    raise RuntimeError(f"{front.name} answered {r.status_code} to a warm-up GET: {r.text[:200]}")


def rounds(fronts: list[Front], n_rounds: int, seconds: float, generator: str, loads: tuple[LoadTest, ...],
           events: int, echoes: int, progress: bool = True) -> Samples:
    out: Samples = defaultdict(lambda: defaultdict(list))
    warm_up(fronts)
    t0 = time.monotonic()
    for r in range(n_rounds):
        order = fronts[r % len(fronts):] + fronts[: r % len(fronts)]
        for test in loads:
            for front in order:
                run_load(front, test, seconds, generator, out)
                time.sleep(0.2)  # let the previous load's connections close
            if progress:
                shown = ", ".join(f"{f.name} {out[f'{test.key} req/s'][f.name][-1]:.0f}" for f in fronts)
                print(f"  [{time.monotonic() - t0:4.0f} s] round {r + 1}/{n_rounds} {test.key}: req/s {shown}",
                      flush=True)
        for front in order:
            if events:
                gaps = sse_gaps(front, events)
                if gaps:
                    out["SSE event ms"][front.name].append(statistics.median(gaps) * 1e3)
            if echoes:
                rtt = ws_round_trips(front, echoes)
                if rtt:
                    out["WebSocket echo ms"][front.name].append(statistics.median(rtt) * 1e3)
    return {k: dict(v) for k, v in out.items()}



def neighbour_latency(hog: Front, victim: str, generator: str, seconds: float, connections: int = 128,
                      slow: float = 0.2) -> dict[str, float]:
    """Issue 12's fairness: the p50 of one client's sequential GETs to another plugin (``victim``: its URL on
    the same host), first with the host otherwise idle, then while ``hog``'s plugin is overloaded
    (``connections`` clients asking for answers that take ``slow`` s each while it serves a few at a time:
    its line fills, the web tier's threads wait for it). The difference is what one plugin's overload costs
    another's latency."""

    def p50(duration: float) -> float:
        times: list[float] = []
        end = time.monotonic() + duration
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < end and len(times) < 5000:
                t = time.perf_counter()
                r = c.get(victim)
                times.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"the neighbour answered {r.status_code}: {r.text[:200]}")
        return statistics.median(times) * 1e3

    idle = p50(seconds)
    target = loadgen.Target(hog.port, hog.prefix + f"/sleep/{slow}", hog.host_header)
    hogging = threading.Thread(target=loadgen.run, args=(target, connections, seconds + 1.5, generator), daemon=True)
    hogging.start()
    time.sleep(1.0)  # the hog's line has filled
    busy = p50(seconds)
    hogging.join(seconds + 60)
    return {"idle": idle, "busy": busy}
