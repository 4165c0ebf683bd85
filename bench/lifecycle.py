"""Lifecycle timings through a real `host serve`, against bare gunicorn measured in the same run.

    .venv/bin/python bench/lifecycle.py [--runs 10]

kill-to-serving  SIGKILL a running plugin's instance, then GET it through the host until it answers 200
                 (the supervisor notices, backs off ~0.1 s, starts a new sandboxed instance, the proxy waits).
cold start       scale to zero: the plugin is asleep; time the first GET until its 200.
baseline         bare gunicorn (same venv, same app, Unix socket, no sandbox, no host): spawn-to-ready.

Each kill is a plugin's *first* failure (HOST_FAILURE_WINDOW=0.5 and a pause between runs let earlier ones
leave the window), so it measures the restart a lone crash gets, not a crash loop's growing backoff.
Prints medians (and min/max) and the ratios to the baseline. Talks only to 127.0.0.1 and Unix sockets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host import control
from host.supervisor.health import probe
from tests.integration.harness import FIXTURES, ServedHost, run_host

PLUGIN = "steady"
DEADLINE = 30.0  # per measurement: a run that takes longer is a failure, not a data point


def poll_until(pred: Callable[[], bool], deadline: float, interval: float = 0.002) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return False


def status(home: Path) -> dict[str, object]:
    return dict(control.call(home / "run" / "control.sock", "status", timeout=10)["plugins"][PLUGIN])


def ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def started(client: httpx.Client, url: str) -> float | None:
    """When the instance that answers was started (None: no answer)."""
    try:
        r = client.get(url + "started")
    except httpx.HTTPError:
        return None
    return float(r.json()["started"]) if r.status_code == 200 else None


def bare_gunicorn(home: Path, runs: int) -> list[float]:
    venv = next((home / "plugins" / PLUGIN).glob("*/venv"))
    bundle = next((home / "plugins" / PLUGIN).glob("*/bundle"))
    sock = Path(tempfile.mkdtemp(prefix="phb-", dir="/tmp")) / "g.sock"
    out = []
    try:
        for _ in range(runs):
            sock.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(venv / "bin" / "python"), "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", "1",
                 "--threads", "4", "--worker-class", "gthread", "--chdir", str(bundle), "app:app"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                if not poll_until(lambda: sock.exists() and probe(sock, "/", 2.0) is None, DEADLINE):
                    raise SystemExit("bare gunicorn did not become ready")
                out.append(time.perf_counter() - t0)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    return out


def kill_to_serving(home: Path, runs: int) -> list[float]:
    host = ServedHost(home, env={"HOST_FAILURE_WINDOW": "0.5", "HOST_MAX_FAILURES": "1000"})
    host.start(wait_plugins=(PLUGIN,))
    url = f"{host.url}/plugins/{PLUGIN}/"
    out = []
    try:
        with httpx.Client(timeout=DEADLINE) as client:
            for _ in range(runs):
                if not poll_until(lambda: ok(client, url), DEADLINE):
                    raise SystemExit(f"plugin not serving before a kill:\n{host.read_log()[-2000:]}")
                time.sleep(0.7)  # > the failure window: this kill is a first failure again
                pid = status(home)["pid"]
                assert isinstance(pid, int)
                before = started(client, url)
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                # Served by the NEW instance: the dying one may still answer a pooled connection for a moment.
                if not poll_until(lambda b=before: started(client, url) not in (None, b), DEADLINE):  # type: ignore[misc]
                    raise SystemExit(f"plugin did not serve again after SIGKILL:\n{host.read_log()[-2000:]}")
                out.append(time.perf_counter() - t0)
    finally:
        host.stop()
    return out


def cold_start(home: Path, runs: int, idle: float = 1.0) -> list[float]:
    run_host(home, "config", PLUGIN, "--idle-timeout", str(idle), check=True)
    host = ServedHost(home).start()
    url = f"{host.url}/plugins/{PLUGIN}/"
    out = []
    try:
        with httpx.Client(timeout=DEADLINE) as client:
            for _ in range(runs):
                if not poll_until(lambda: status(home)["state"] == "stopped", DEADLINE + idle, 0.05):
                    raise SystemExit("plugin did not scale to zero")
                t0 = time.perf_counter()
                r = client.get(url)
                if r.status_code != 200:
                    raise SystemExit(f"cold start answered {r.status_code}: {r.text[:200]}")
                out.append(time.perf_counter() - t0)
    finally:
        host.stop()
        run_host(home, "config", PLUGIN, "--reset", check=True)
    return out


def show(label: str, xs: list[float], base: float | None = None) -> float:
    med = statistics.median(xs)
    ratio = f"   {med / base:5.2f}x baseline" if base else ""
    print(f"{label:<34} median {med * 1000:7.1f} ms   min {min(xs) * 1000:7.1f}   max {max(xs) * 1000:7.1f}"
          f"   (n={len(xs)}){ratio}")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    runs = max(1, min(args.runs, 100))
    d = Path(tempfile.mkdtemp(prefix="ph-bench-", dir="/tmp"))
    home = d / "h"
    try:
        run_host(home, "install", str(FIXTURES / "steady"), "--yes", check=True)
        base = show("bare gunicorn spawn-to-ready", bare_gunicorn(home, runs))
        kill = show("kill-to-serving (SIGKILL → 200 from new)", kill_to_serving(home, runs), base)
        cold = show("cold start (scale-to-zero → 200)", cold_start(home, runs), base)
        print(f"\nkill-to-serving target < 500 ms: {'met' if kill < 0.5 else 'MISSED'} ({kill * 1000:.0f} ms); "
              f"cold start = {cold / base:.2f}x a bare gunicorn start")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
