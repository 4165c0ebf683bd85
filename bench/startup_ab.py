"""Start-up figures of this tree against another one (``--baseline-python``: that tree's venv python),
alternated sample by sample so that the shared machine's load drifts over both alike:

    .venv/bin/python -m bench.startup_ab --home /tmp/sb --baseline-python /tmp/main/.venv/bin/python [--runs 15]
        [--only spawn,lifecycle]

spawn      spawn-to-ready of tiny0: bare gunicorn, the sandboxed command as this tree's host starts it, and the
           same policy under the other tree's runner, started the documented way (``python -I -m sandbox_runner
           --policy FILE -- CMD``)
lifecycle  `host serve` of each tree in turn, on two homes (``--home``/s and ``--home``/base), three samples
           per turn of cold start (the first GET of the scaled-to-zero plugin) and kill-to-serving (SIGKILL, GET
           until the new instance answers)

The homes are kept between runs (tiny0 is installed into each when missing, the baseline's by its own tree).
Prints the median of each and the ratios, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from bench import startup
from bench.fronts import bare_argv, kill, spawn_bare
from bench.lifecycle import poll_until
from host import launch
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.health import probe
from sandbox_runner.layers import cgroup
from tests.integration.harness import ServedHost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--baseline-python", required=True, help="another tree's venv python (its runner)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--only", default="spawn,lifecycle")
    args = ap.parse_args(argv)
    home: Path = args.home / "s"
    if not (home / "plugins" / "tiny0").exists():
        print(f"installing tiny0: {startup.install(home, args.home, 0):.1f}s", flush=True)
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), flush=True)
    if "spawn" in args.only.split(","):
        spawn(home, args.baseline_python, args.runs)
    if "lifecycle" in args.only.split(","):
        lifecycle(home, args.home / "base", args.baseline_python, args.runs)
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), flush=True)
    return 0


def spawn(home: Path, baseline_python: str, runs: int) -> None:
    settings = HostSettings(home=home)
    record = Registry(home / "registry.db").require("tiny0")
    uid = launch.plugin_uid(settings, record.uid_index)
    backend = launch.serving_backend(settings)
    out: dict[str, list[float]] = {"bare": [], "baseline": [], "this tree": []}
    for i in range(runs):
        for k, kind in enumerate(out):
            spec = launch.build(settings, record, generation=3 * i + k + 1, backend=backend)
            listener = launch.prepare(settings, spec, uid)
            if kind == "bare":
                listener.close()
                cmd, env = bare_argv(home, "tiny0")
                t0 = time.perf_counter()
                proc = spawn_bare(cmd, env, spec.instance_socket)
            else:
                cmd = list(spec.argv)
                if kind == "baseline":
                    cmd = [baseline_python, "-I", "-m", "sandbox_runner", "--policy",
                           baseline_policy(spec.policy_path), *cmd[cmd.index("--policy") + 2:]]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, env={"PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True,
                                        pass_fds=(listener.fileno(),))
                listener.close()
                if not poll_until(lambda s=spec.instance_socket: probe(s, "/", 2.0) is None, 30):  # type: ignore[misc]
                    kill(proc)
                    raise RuntimeError(f"{kind}: tiny0 did not become ready")
            out[kind].append((time.perf_counter() - t0) * 1e3)
            kill(proc)
            spec.instance_socket.unlink(missing_ok=True)
            if kind != "bare" and spec.policy.cgroup_name:
                cgroup.cleanup(spec.policy.cgroup_name)
    bare = statistics.median(out["bare"])
    for kind, xs in out.items():
        show(f"spawn-to-ready {kind}", xs, f"{statistics.median(xs) / bare:4.2f}x bare")


def lifecycle(home: Path, base_home: Path, baseline_python: str, runs: int, per_host: int = 3) -> None:
    from tests.integration import harness

    if not (base_home / "plugins" / "tiny0").exists():
        subprocess.run([baseline_python, "-m", "host", "--home", str(base_home), "install",
                        str(startup.tiny_copy(base_home.parent, 0)), "--yes"], check=True, capture_output=True)
    # Each kill a first failure (restarted at once); asleep 1.5 s after the last request.
    env = {"HOST_FAILURE_WINDOW": "0.5", "HOST_MAX_FAILURES": "1000", "HOST_IDLE_TIMEOUT": "1.5"}
    sides = {"baseline": ([baseline_python, "-m", "host"], base_home), "this tree": (harness.HOST, home)}
    kills: dict[str, list[float]] = {k: [] for k in sides}
    colds: dict[str, list[float]] = {k: [] for k in sides}
    mine = harness.HOST
    # One host at a time (two idle hosts slow each other's starts), ``per_host`` samples of each per turn;
    # every other round the other tree first.
    for i in range(max(1, runs // per_host)):
        for kind, (command, where) in sorted(sides.items(), reverse=bool(i % 2)):
            harness.HOST = command  # what ServedHost.start runs
            try:
                host = startup.serve(where, env)
            finally:
                harness.HOST = mine
            try:
                _lifecycle_samples(host, kind, per_host, kills[kind], colds[kind])
            finally:
                host.stop()
    for what, samples in (("kill-to-serving", kills), ("cold start", colds)):
        base = statistics.median(samples["baseline"])
        for kind, xs in samples.items():
            show(f"{what} {kind}", xs, f"{statistics.median(xs) / base:4.2f}x baseline")


def _lifecycle_samples(host: ServedHost, kind: str, n: int, kills: list[float], colds: list[float]) -> None:
    url = f"{host.url}/plugins/tiny0"
    with httpx.Client(timeout=startup.DEADLINE) as client:
        for _ in range(n):
            if not poll_until(lambda: startup.asleep(host, ["tiny0"]), 30, 0.02):
                raise RuntimeError(f"{kind}: tiny0 did not scale to zero")
            seconds: list[float] = []
            errors: list[str] = []
            startup.get_timed(f"{url}/started", seconds, errors)
            if errors:
                raise RuntimeError(f"{kind}: cold start: {errors[0]}")
            colds.append(seconds[0] * 1e3)
            pid = int(host.status()["plugins"]["tiny0"]["pid"])
            before = startup.started(client, url)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            if not poll_until(lambda b=before: startup.started(client, url) not in (None, b), 30):  # type: ignore[misc]
                raise RuntimeError(f"{kind}: tiny0 did not serve again after SIGKILL")
            kills.append((time.perf_counter() - t0) * 1e3)


def show(what: str, xs: list[float], ratio: str) -> None:
    print(f"{what:32} median {statistics.median(xs):7.1f} ms  {ratio}   ({', '.join(f'{x:.0f}' for x in xs)})",
          flush=True)


def baseline_policy(path: Path) -> str:
    """The policy file without the fields an older runner refuses as unknown (the precompiled seccomp filter)."""
    raw = json.loads(path.read_text())
    raw.pop("seccomp_filter", None)
    out = path.with_name(path.name + ".baseline")
    out.write_text(json.dumps(raw))
    os.chmod(out, 0o600)
    return str(out)


if __name__ == "__main__":
    raise SystemExit(main())
