"""Only the start-up figures of `./dev bench` (spawn-to-ready and PSS bare vs sandboxed, kill-to-serving, cold
start alone and N at once), on a home that is kept between runs so the installs happen once:

    .venv/bin/python -m bench.startup_only --home /tmp/sb [--runs 5] [--at-once 3] [--only runner,spawn,kill,cold]

Prints the median of each figure (and every sample) as one line per test. ``runner`` is the sandbox's own
cost without the plugin: the runner confining ``/bin/true`` under the plugin's policy, CPU time (robust on a
loaded machine) and wall time. With bubblewrap the runner becomes bwrap, which does not wait for the sandbox's
init: the CPU of the init and the inner stage is then nobody's child's and missing from the CPU figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

from bench import startup
from host import launch
from host.registry import Registry
from host.settings import HostSettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="kept between runs; installed into when empty")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--at-once", type=int, default=3)
    ap.add_argument("--only", default="runner,spawn,kill,cold")
    args = ap.parse_args(argv)
    home: Path = args.home / "s"
    names = [f"tiny{i}" for i in range(args.at_once)]
    for i, name in enumerate(names):
        if not (home / "plugins" / name).exists():
            print(f"installing {name}: {startup.install(home, args.home, i):.1f}s", flush=True)
    only = set(args.only.split(","))
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), flush=True)
    if "runner" in only:
        cpu, wall = runner_alone(home, names[0], args.runs * 2)
        show("runner alone CPU ms", cpu)
        show("runner alone wall ms", wall)
    if "spawn" in only:
        s = startup.spawn(home, names[0], args.runs)
        show("spawn-to-ready bare ms", [x * 1e3 for x in s["bare s"]])
        show("spawn-to-ready sandboxed ms", [x * 1e3 for x in s["sandboxed s"]])
        show("PSS bare MiB", s["bare MiB"])
        show("PSS sandboxed MiB", s["sandboxed MiB"])
    if "kill" in only:
        show("kill-to-serving ms", [x * 1e3 for x in startup.kill_to_serving(home, names[0], args.runs)])
    if "cold" in only:
        c = startup.cold_starts(home, names, args.runs)
        show("cold start ms", [x * 1e3 for x in c["single"]])
        show(f"cold start x{len(names)} at once ms", [x * 1e3 for x in c["many"]])
    return 0


def runner_alone(home: Path, plugin: str, runs: int) -> tuple[list[float], list[float]]:
    """The runner with the plugin's policy (sockets, cgroups, bwrap, every layer) exec'ing /bin/true."""
    settings = HostSettings(home=home)
    record = Registry(home / "registry.db").require(plugin)
    uid = launch.plugin_uid(settings, record.uid_index)
    backend = launch.serving_backend(settings)
    cpu: list[float] = []
    wall: list[float] = []
    for i in range(runs):
        spec = launch.build(settings, record, generation=1000 + i, backend=backend)
        listener = launch.prepare(settings, spec, uid)
        argv = [*spec.argv[: spec.argv.index("--") + 1], "/bin/true"]
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        rc = subprocess.run(argv, env={"PATH": os.environ["PATH"]}, pass_fds=(listener.fileno(),),
                            start_new_session=True, check=False).returncode
        wall.append((time.perf_counter() - t0) * 1e3)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3)
        listener.close()
        spec.instance_socket.unlink(missing_ok=True)
        if rc != 0:
            raise RuntimeError(f"the runner exited with {rc}")
    return cpu, wall


def show(what: str, xs: list[float]) -> None:
    print(f"{what:32} median {statistics.median(xs):8.1f}   ({', '.join(f'{x:.0f}' for x in xs)})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
