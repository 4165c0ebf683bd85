"""`python -m bench.memory`: the idle host's memory, process by process (issue 12's "host idle PSS").

Installs the bundled plugins (or ``--plugin DIR``, repeatable) into a fresh home under /tmp, serves them with
scale to zero (HOST_IDLE_TIMEOUT, so they are asleep), waits until every one is stopped, then prints PSS, USS
and RSS of each host process (from /proc/PID/smaps_rollup: what the bench's "host idle PSS MiB" sums) and the
total. ``--rounds N`` repeats the look N times, a second apart, and prints the median per process.

    python -m bench.memory [--plugin DIR ...] [--rounds N] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from bench.lifecycle import poll_until
from bench.startup import asleep, serve
from tests.integration.harness import run_host, short_home

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "plugin.toml").exists())


def rollup(pid: int) -> dict[str, int]:
    """KiB by field of /proc/PID/smaps_rollup (Pss, Rss, Private_Clean, Private_Dirty, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def label(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    with open(f"/proc/{pid}/status") as fh:
        uid = next(line.split()[1] for line in fh if line.startswith("Uid:"))
    text = " ".join(a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(argv))
    return f"uid {uid:>6} {text[:90]}"


def look(pids: set[int]) -> dict[str, tuple[int, int, int]]:
    """label -> (PSS, USS, RSS) KiB; labels made unique by pid order."""
    out: dict[str, tuple[int, int, int]] = {}
    for n, pid in enumerate(sorted(pids)):
        try:
            r = rollup(pid)
            name = f"{n:2} {label(pid)}"
        except OSError:  # exited meanwhile
            continue
        out[name] = (r["Pss"], r.get("Private_Clean", 0) + r.get("Private_Dirty", 0), r["Rss"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--plugin", type=Path, action="append", help="plugin dir to install (default: plugins/*)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for `host serve`")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    with short_home() as home:
        names = []
        for src in args.plugin or BUNDLED:
            run_host(home, "install", str(src), "--yes", check=True)
            names.append(re.search(r'^name = "([^"]+)"', (src / "plugin.toml").read_text(), re.M)[1])
        host = serve(home, {"HOST_IDLE_TIMEOUT": "1", **env})
        try:
            if not poll_until(lambda: asleep(host, names), 60, 0.1):
                raise SystemExit(f"plugins did not scale to zero: {host.status()['plugins']}")
            time.sleep(2.0)
            looks = []
            for _ in range(max(1, min(args.rounds, 20))):
                looks.append(look(host.all_pids()))
                time.sleep(1.0)
        finally:
            host.stop()
    keys = list(looks[0])
    print(f"{'process':<100} {'PSS':>7} {'USS':>7} {'RSS':>7}  MiB, median of {len(looks)}")
    totals = [0.0, 0.0, 0.0]
    for key in keys:
        vals = [statistics.median(lk[key][i] for lk in looks if key in lk) / 1024 for i in range(3)]
        totals = [t + v for t, v in zip(totals, vals, strict=True)]
        print(f"{key:<100} {vals[0]:7.1f} {vals[1]:7.1f} {vals[2]:7.1f}")
    print(f"{'total (host idle PSS)':<100} {totals[0]:7.1f} {totals[1]:7.1f} {totals[2]:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
