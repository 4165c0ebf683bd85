"""Start-up, install and memory figures of `./dev bench`, on a home of copies of a Flask-only plugin
(bench/plugins/tiny renamed tiny0, tiny1, ...):

install cold/warm   `host install` into a fresh home (cold), then further copies into the same home (warm)
spawn-to-ready      bare gunicorn (the host's argv, no sandbox) vs the sandboxed command the supervisor runs,
                    alternated; process start until the app answers on its socket
idle PSS            of one plugin's process tree, bare and sandboxed (smaps_rollup), and of the host itself
                    (supervisor, web tier, egress: every process of `host serve` that is not a plugin's)
kill-to-serving     SIGKILL the running instance, GET through the host until the NEW instance answers
cold start          scale to zero: the plugin is asleep; the first GET until its 200; and N at once
many plugins        N plugins on one host with scale to zero: total PSS asleep and awake, first-request latency
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from bench import lifecycle
from bench.fronts import bare_argv, kill, spawn_bare, tree
from bench.lifecycle import poll_until
from host import launch
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.health import probe
from sandbox_runner.layers import cgroup
from tests.integration.harness import ServedHost, run_host

TINY = Path(__file__).resolve().parent / "plugins" / "tiny"
DEADLINE = 30.0


def tiny_copy(tmp: Path, i: int) -> Path:
    src = tmp / "src" / f"tiny{i}"
    if not src.exists():
        shutil.copytree(TINY, src)
        toml = src / "plugin.toml"
        toml.write_text(re.sub(r'^name = "tiny"', f'name = "tiny{i}"', toml.read_text(), flags=re.M))
    return src


def install(home: Path, tmp: Path, i: int) -> float:
    t0 = time.perf_counter()
    run_host(home, "install", str(tiny_copy(tmp, i)), "--yes", check=True)
    return time.perf_counter() - t0


def pss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                total += sum(int(ln.split()[1]) for ln in fh if ln.startswith("Pss:"))
        except OSError:
            pass
    return total


def spawn(home: Path, plugin: str, runs: int) -> dict[str, list[float]]:
    """Spawn-to-ready (s) and idle PSS (MiB) of ``plugin``, bare and sandboxed, alternated; no host running."""
    settings = HostSettings(home=home)
    record = Registry(home / "registry.db").require(plugin)
    uid = launch.plugin_uid(settings, record.uid_index)
    out: dict[str, list[float]] = {"bare s": [], "sandboxed s": [], "bare MiB": [], "sandboxed MiB": []}
    backend = launch.serving_backend(settings)  # as the supervisor does: probed once, named in each policy
    for i in range(runs):
        for kind in ("bare", "sandboxed"):
            spec = launch.build(settings, record, generation=2 * i + (kind == "bare") + 1, backend=backend)
            listener = launch.prepare(settings, spec, uid)  # binds the socket, as the supervisor does
            if kind == "bare":  # gunicorn alone, binding its own socket: no runner, no layers
                listener.close()
                argv, env = bare_argv(home, plugin)
                t0 = time.perf_counter()
                proc = spawn_bare(argv, env, spec.instance_socket)
            else:
                t0 = time.perf_counter()
                proc = subprocess.Popen(spec.argv, env={"PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True,
                                        pass_fds=(listener.fileno(),))
                listener.close()
                if not poll_until(lambda s=spec.instance_socket: probe(s, "/", 2.0) is None, DEADLINE):  # type: ignore[misc]
                    kill(proc)
                    raise RuntimeError(f"sandboxed {plugin} did not become ready")
            out[f"{kind} s"].append(time.perf_counter() - t0)
            if i < 2:
                time.sleep(1.0)  # idle
                out[f"{kind} MiB"].append(pss_kib(tree(proc.pid)) / 1024)
            kill(proc)
            spec.instance_socket.unlink(missing_ok=True)
            if kind == "sandboxed" and spec.policy.cgroup_name:
                # what the supervisor does after an instance (the runner does not stay to remove them)
                cgroup.cleanup(spec.policy.cgroup_name)
    return out


def serve(home: Path, env: dict[str, str], wait: tuple[str, ...] = ()) -> ServedHost:
    """`host serve` with the default web tier (the harness's ServedHost pins 1 worker x 32 threads), or what
    HOST_WEB_WORKERS / HOST_WEB_THREADS in our environment say; every other HOST_* variable passes through."""
    env = {"HOST_WEB_WORKERS": str(web_setting("web_workers")), "HOST_WEB_THREADS": str(web_setting("web_threads")),
           **env}
    return ServedHost(home, env=env).start(wait_plugins=wait, timeout=120)


def web_setting(field: str) -> int:
    return int(os.environ.get(f"HOST_{field.upper()}") or HostSettings.model_fields[field].default)


def plugin_pids(host: ServedHost) -> set[int]:
    out: set[int] = set()
    for p in host.status()["plugins"].values():
        if p.get("pid"):
            out |= tree(int(p["pid"]))
    return out


def host_pss_mib(host: ServedHost) -> float:
    """The host's own processes (not the plugins')."""
    return pss_kib(host.all_pids() - plugin_pids(host)) / 1024


def started(client: httpx.Client, url: str) -> float | None:
    return lifecycle.started(client, url + "/")


def kill_to_serving(home: Path, plugin: str, runs: int) -> list[float]:
    # Each kill a first failure: the window forgets the previous one before the next kill.
    host = serve(home, {"HOST_FAILURE_WINDOW": "0.5", "HOST_MAX_FAILURES": "1000"}, wait=(plugin,))
    url = f"{host.url}/plugins/{plugin}"
    out = []
    try:
        with httpx.Client(timeout=DEADLINE) as client:
            for _ in range(runs):
                if not poll_until(lambda: started(client, url) is not None, DEADLINE, 0.01):
                    raise RuntimeError(f"{plugin} not serving before a kill")
                time.sleep(0.7)
                pid = int(host.status()["plugins"][plugin]["pid"])
                before = started(client, url)
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                if not poll_until(lambda b=before: started(client, url) not in (None, b), DEADLINE):  # type: ignore[misc]
                    raise RuntimeError(f"{plugin} did not serve again after SIGKILL")
                out.append(time.perf_counter() - t0)
    finally:
        host.stop()
    return out


def asleep(host: ServedHost, names: list[str]) -> bool:
    plugins = host.status()["plugins"]
    return all(plugins.get(n, {}).get("state") == "stopped" for n in names)


def get_timed(url: str, out: list[float], errors: list[str]) -> None:
    t0 = time.perf_counter()
    try:
        r = httpx.get(url, timeout=DEADLINE)
    except httpx.HTTPError as exc:
        errors.append(repr(exc))
        return
    if r.status_code != 200:
        errors.append(f"{r.status_code} {r.text[:100]}")
        return
    out.append(time.perf_counter() - t0)


def cold_starts(home: Path, names: list[str], runs: int, idle: float = 1.0) -> dict[str, list[float]]:
    """First-request latency of an asleep plugin (s), one at a time, then all ``names`` at once (the slowest)."""
    host = serve(home, {"HOST_IDLE_TIMEOUT": str(idle)})
    res: dict[str, list[float]] = {"single": [], "many": [], "host MiB": []}
    try:
        for i in range(runs):
            if not poll_until(lambda: asleep(host, names), DEADLINE + idle, 0.05):
                raise RuntimeError("plugins did not scale to zero")
            if i == 0:
                res["host MiB"].append(host_pss_mib(host))
            errors: list[str] = []
            get_timed(f"{host.url}/plugins/{names[0]}/started", res["single"], errors)
            if errors:
                raise RuntimeError(f"cold start of {names[0]}: {errors[0]}")
        for _ in range(max(1, runs // 3)):
            if not poll_until(lambda: asleep(host, names), DEADLINE + idle, 0.05):
                raise RuntimeError("plugins did not scale to zero")
            times: list[float] = []
            errors = []
            threads = [threading.Thread(target=get_timed, args=(f"{host.url}/plugins/{n}/started", times, errors))
                       for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join(DEADLINE + 5)
            if errors:
                raise RuntimeError(f"{len(errors)} of {len(names)} concurrent cold starts failed: {errors[0]}")
            res["many"].append(max(times))
    finally:
        host.stop()
    return res


def many_plugins(home: Path, names: list[str]) -> dict[str, float]:
    """All ``names`` installed on one host that scales them to zero: memory asleep and awake, and each one's
    first request (one after another)."""
    host = serve(home, {"HOST_IDLE_TIMEOUT": "600"})
    try:
        if not poll_until(lambda: asleep(host, names), DEADLINE, 0.1):
            raise RuntimeError("plugins not asleep")
        time.sleep(1.0)
        asleep_mib = pss_kib(host.all_pids()) / 1024
        first: list[float] = []
        errors: list[str] = []
        for n in names:
            get_timed(f"{host.url}/plugins/{n}/started", first, errors)
        time.sleep(1.0)
        awake_mib = pss_kib(host.all_pids()) / 1024
        first.sort()
        return {"plugins": len(names), "answered": len(first), "errors": len(errors),
                "total PSS asleep MiB": asleep_mib, "total PSS awake MiB": awake_mib,
                "first request p50 ms": first[len(first) // 2] * 1e3 if first else float("nan"),
                "first request p90 ms": first[int(len(first) * 0.9)] * 1e3 if first else float("nan"),
                "first request max ms": first[-1] * 1e3 if first else float("nan")}
    finally:
        host.stop()

