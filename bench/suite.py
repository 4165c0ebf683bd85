"""`./dev bench`: the side-by-side benchmark of issue 12: one command, one table of medians, ratios and goals.

README's Benchmarks section says what each contender and figure is.

    ./dev bench [--quick] [--rounds N] [--seconds S] [--loadgen wrk|python] [--only direct,host-path,...]

Builds its own contenders on temp homes under /tmp, alternates them round by round, prints one table of
medians, ratios against direct and the issue's goals, and writes the whole run as JSON to
bench/results/<timestamp>.json. Talks only to 127.0.0.1 and Unix sockets; every loop is bounded in count and
time; every process it starts it stops by process group.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import datapath, fronts, report, startup
from tests.integration.harness import run_host, unmount_under

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    seconds: float
    loads: tuple[datapath.LoadTest, ...]
    events: int  # SSE events per contender per round
    echoes: int  # WebSocket round trips per contender per round
    startup_runs: int
    at_once: int  # plugins cold-started at once (and installed for it)
    many: int  # plugins on one host with scale to zero (0: skipped)
    fairness: float = 0.0  # seconds per fairness measurement (0: skipped; it installs a second plugin)


PLANS = {
    "full": Plan("full", 3, 3.0, datapath.LOADS, 200, 200, 10, 10, 100, 3.0),
    "quick": Plan("quick", 2, 1.0, datapath.LOADS, 50, 50, 3, 3, 0, 2.0),
    # The smallest end-to-end configuration (tests/integration/test_bench.py): no installs but benchapp's,
    # whose home the start-up tests reuse (at_once=0).
    "smoke": Plan("smoke", 1, 0.5, tuple(t for t in datapath.LOADS if t.key in ("tiny GET c1", "tiny GET c32",
                                                                                 "1 MiB POST c8")), 5, 5, 1, 0, 0, 0.5),
}


def data_path(plan: Plan, tmp: Path, only: set[str], generator: str, skipped: dict[str, str],
              samples: dict[str, dict[str, list[float]]]) -> None:
    home = tmp / "h"
    t0 = time.perf_counter()
    run_host(home, "install", str(BENCH / "plugins" / "benchapp"), "--yes", check=True)
    if plan.fairness:  # the neighbour whose latency the fairness test watches
        run_host(home, "install", str(BENCH / "plugins" / "tiny"), "--yes", check=True)
    host = startup.serve(home, {}, wait=(fronts.PLUGIN, "tiny") if plan.fairness else (fronts.PLUGIN,))
    print(f"  benchapp installed and served by the host in {time.perf_counter() - t0:.1f} s", flush=True)
    started: list[fronts.Front] = []
    try:
        started.append(fronts.direct(home, tmp))
        started += [f for f in fronts.host_fronts(host) if f.name in only]
        backend = started[0].backend
        makers = {"nginx": lambda: fronts.nginx(tmp, backend, startup.web_setting("web_workers")),
                  "jsp": lambda: fronts.jsp(tmp, backend)}
        for name, make in makers.items():
            if name not in only:
                skipped[name] = "not asked for (--only)"
                continue
            try:
                started.append(make())
            except fronts.Skip as exc:
                skipped[name] = str(exc)
                print(f"  {name}: skipped: {exc}", flush=True)
        print(f"== data path: {', '.join(f.name for f in started)}; {plan.rounds} rounds, {plan.seconds:g} s per "
              f"load, load generator {generator}", flush=True)
        got = datapath.rounds(started, plan.rounds, plan.seconds, generator, plan.loads, plan.events, plan.echoes)
        samples.update(got)
        path_front = next((f for f in started if f.name == "host-path"), None)
        if path_front is not None and plan.fairness:
            print("== fairness: another plugin's latency while benchapp is overloaded", flush=True)
            for _ in range(plan.rounds):
                got_n = datapath.neighbour_latency(path_front, f"http://127.0.0.1:{host.port}/plugins/tiny/",
                                                   generator, plan.fairness)
                samples.setdefault("neighbour added p50 ms", {}).setdefault("host-path", []).append(
                    got_n["busy"] - got_n["idle"])
                samples.setdefault("neighbour p50 idle ms", {}).setdefault("host-path", []).append(got_n["idle"])
    finally:
        for f in started:
            for p in f.procs:
                fronts.kill(p)
        host.stop()


def lifecycle(plan: Plan, tmp: Path, samples: dict[str, dict[str, list[float]]], extra: dict[str, object]) -> None:
    if plan.at_once:
        home, n = tmp / "s", plan.at_once
        print(f"== install, start-up and memory: {n} copies of a Flask-only plugin", flush=True)
        samples["install cold s"] = {"host-path": [startup.install(home, tmp, 0)]}
        samples["install warm s"] = {"host-path": [startup.install(home, tmp, i) for i in range(1, n)]}
        names = [f"tiny{i}" for i in range(n)]
    else:  # the data path's home and plugin, no installs
        home, n, names = tmp / "h", 1, [fronts.PLUGIN]
        print("== start-up and memory: the data path's plugin", flush=True)
    spawn = startup.spawn(home, names[0], plan.startup_runs)
    samples["spawn-to-ready ms"] = {"direct": [s * 1e3 for s in spawn["bare s"]],
                                    "host-path": [s * 1e3 for s in spawn["sandboxed s"]]}
    samples["per-plugin PSS MiB"] = {"direct": spawn["bare MiB"], "host-path": spawn["sandboxed MiB"]}
    samples["kill-to-serving ms"] = {"host-path": [s * 1e3 for s in startup.kill_to_serving(home, names[0],
                                                                                            plan.startup_runs)]}
    cold = startup.cold_starts(home, names, plan.startup_runs)
    samples["cold start ms"] = {"host-path": [s * 1e3 for s in cold["single"]]}
    samples[f"cold start x{n} at once ms"] = {"host-path": [s * 1e3 for s in cold["many"]]}
    samples["host idle PSS MiB"] = {"host-path": cold["host MiB"]}
    if plan.many and plan.at_once:
        print(f"== {plan.many} plugins on one host, scale to zero", flush=True)
        t0 = time.perf_counter()
        # One after another, so that each sample is one install's time (builds may overlap since issue 12).
        warm = [startup.install(home, tmp, i) for i in range(n, plan.many)]
        samples.setdefault("install warm s", {"host-path": []})["host-path"] += warm
        extra["installs of the many-plugins host s"] = time.perf_counter() - t0
        many = startup.many_plugins(home, [f"tiny{i}" for i in range(plan.many)])
        extra["many plugins"] = many
        for key in ("answered", "total PSS asleep MiB", "total PSS awake MiB", "first request p50 ms",
                    "first request p90 ms"):
            samples[f"{plan.many} plugins: {key}"] = {"host-path": [many[key]]}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_const", const="quick", dest="mode",
                    help="2 rounds of 1 s loads, 3 plugins, no 100-plugin host (~3 min)")
    ap.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                    help="the smallest end-to-end run (seconds; what the test runs)")
    ap.add_argument("--rounds", type=int, help="rounds of the data-path tests (each contender once a round)")
    ap.add_argument("--seconds", type=float, help="seconds per load run")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                    help="auto: wrk (apt-get installs it when missing and root), else a bounded Python generator")
    ap.add_argument("--only", default=",".join(report.CONTENDERS),
                    help="contenders to run, comma-separated (direct always runs: it is the baseline)")
    ap.add_argument("--many", type=int, help="plugins on the scale-to-zero host (full run: 100; 0 skips it)")
    ap.add_argument("--no-startup", action="store_true", help="data path only: no install/start-up/memory tests")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = ap.parse_args(argv)
    plan = PLANS[args.mode or "full"]
    plan = Plan(plan.mode, max(1, min(args.rounds or plan.rounds, 50)), max(0.5, min(args.seconds or plan.seconds,
                60)), plan.loads, plan.events, plan.echoes, plan.startup_runs, plan.at_once,
                plan.many if args.many is None else max(0, min(args.many, 500)), plan.fairness)
    generator = args.loadgen
    if generator != "python":
        try:
            fronts.ensure_apt("wrk", "wrk")
            generator = "wrk"
        except fronts.Skip as exc:
            if generator == "wrk":
                raise SystemExit(f"error: {exc}") from None
            print(f"  wrk: {exc}; using the Python load generator", flush=True)
            generator = "python"
    only = {c.strip() for c in args.only.split(",")} | {"direct"}
    t0 = time.perf_counter()
    skipped: dict[str, str] = {c: "not asked for (--only)" for c in ("host-path", "host-origin") if c not in only}
    samples: dict[str, dict[str, list[float]]] = {}
    extra: dict[str, object] = {}
    tmp = Path(tempfile.mkdtemp(prefix="phb-", dir="/tmp"))
    try:
        data_path(plan, tmp, only, generator, skipped, samples)
        if not args.no_startup:
            lifecycle(plan, tmp, samples, extra)
    finally:
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = report.rows(samples)
    took = time.perf_counter() - t0
    print("\nreq/s counts 2xx/3xx answers only; non-2xx = other answers + socket errors; CPU us/req = CPU time of the "
          "front's own processes per answer (direct: the app's)")
    print(f"== ./dev bench --{plan.mode}: medians (ratio vs direct); {plan.rounds} rounds x {plan.seconds:g} s, "
          f"{generator}, {os.cpu_count()} CPUs, commit {git_commit()}, {took:.0f} s")
    print(report.table(rows, skipped))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{stamp}.json"
    out.write_text(json.dumps({"mode": plan.mode, "commit": git_commit(), "generator": generator,
                               "cpus": os.cpu_count(), "seconds": took, "plan": {
                                   "rounds": plan.rounds, "seconds": plan.seconds, "events": plan.events,
                                   "echoes": plan.echoes, "startup_runs": plan.startup_runs,
                                   "at_once": plan.at_once, "many": plan.many},
                               "skipped": skipped, "rows": rows, "samples": samples, "extra": extra},
                              indent=1, default=str).replace("NaN", "null"))  # JSON has no NaN
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
