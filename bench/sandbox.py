"""Sandbox start-up cost and idle memory: the same plugin started bare (gunicorn alone) and sandboxed
(sandbox_runner + bubblewrap + every layer), spawn-to-ready, in one run.

    .venv/bin/python bench/sandbox.py [--runs 10]

Spawn-to-ready = process start until the plugin answers an HTTP request on its Unix socket.
Prints medians and the sandboxed/bare ratio; memory is the summed RSS/PSS of each process tree once idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host import launch
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.health import probe
from tests.integration.harness import BUNDLED, descendants, run_host

READY_DEADLINE = 30.0


def tree_memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for p in {pid} | descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for ln in fh:
                    if ln.startswith("Rss:"):
                        rss += int(ln.split()[1])
                    elif ln.startswith("Pss:"):
                        pss += int(ln.split()[1])
        except (FileNotFoundError, PermissionError):
            pass
    return rss, pss


def start_and_wait(argv: list[str], env: dict[str, str], sock: Path,
                   listener: socket.socket | None = None) -> tuple[float, subprocess.Popen[bytes]]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, pass_fds=(listener.fileno(),) if listener else ())
    if listener is not None:
        listener.close()
    deadline = time.monotonic() + READY_DEADLINE
    while probe(sock, "/", 2.0) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"plugin did not become ready ({proc.returncode}): {' '.join(argv[:6])} ...")
        time.sleep(0.005)
    return time.perf_counter() - t0, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ph-bench-", dir="/tmp"))
    home = tmp / "h"
    try:
        run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)
        settings = HostSettings(home=home)
        record = Registry(home / "registry.db").require("example")
        uid = launch.plugin_uid(settings, record.uid_index)
        results: dict[str, list[float]] = {"bare": [], "sandboxed": []}
        memory: dict[str, tuple[int, int]] = {}
        for i in range(args.runs):
            for kind in ("bare", "sandboxed"):
                spec = launch.build(settings, record, generation=2 * i + (kind == "bare"))
                listener = launch.prepare(settings, spec, uid)  # binds the socket, as the supervisor does
                if kind == "bare":  # gunicorn alone, as root, binding its own socket: no runner, no layers
                    listener.close()
                    spec.instance_socket.unlink()
                    argv = [*spec.argv[spec.argv.index("--") + 1:], "--bind", f"unix:{spec.instance_socket}"]
                    took, proc = start_and_wait(argv, spec.env, spec.instance_socket)
                else:
                    took, proc = start_and_wait(spec.argv, {"PATH": os.environ["PATH"]}, spec.instance_socket,
                                                listener)
                results[kind].append(took)
                if i == 0:
                    time.sleep(1.0)  # idle
                    memory[kind] = tree_memory_kib(proc.pid)
                stop(proc)
        b, s = statistics.median(results["bare"]), statistics.median(results["sandboxed"])
        print(f"spawn-to-ready, median of {args.runs}: bare gunicorn {b * 1e3:.0f} ms, "
              f"sandboxed {s * 1e3:.0f} ms, ratio {s / b:.2f}x (+{(s - b) * 1e3:.0f} ms)")
        for kind, (rss, pss) in memory.items():
            print(f"idle memory, {kind:<9}: RSS {rss / 1024:6.1f} MiB, PSS {pss / 1024:6.1f} MiB (whole process tree)")
        extra = memory["sandboxed"][1] - memory["bare"][1]
        print(f"sandbox overhead per plugin: PSS +{extra / 1024:.1f} MiB "
              f"(ratio {memory['sandboxed'][1] / memory['bare'][1]:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
