"""Spawn-to-ready of one plugin three ways, alternated round by round: bare gunicorn, the sandboxed command as
this tree's host starts it, and the same policy under another tree's runner (``--baseline-python``: that
tree's venv python, started the documented way, ``python -I -m sandbox_runner --policy FILE -- CMD``):

    .venv/bin/python -m bench.startup_ab --home /tmp/sb --baseline-python /tmp/main/.venv/bin/python [--runs 15]

The home is the one bench.startup_only keeps (its tiny0 is installed when missing). Prints the median of each
and the ratios to bare, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from bench import startup
from bench.fronts import bare_argv, kill, spawn_bare
from bench.lifecycle import poll_until
from host import launch
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.health import probe
from sandbox_runner.layers import cgroup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--baseline-python", required=True, help="another tree's venv python (its runner)")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    home: Path = args.home / "s"
    if not (home / "plugins" / "tiny0").exists():
        print(f"installing tiny0: {startup.install(home, args.home, 0):.1f}s", flush=True)
    settings = HostSettings(home=home)
    record = Registry(home / "registry.db").require("tiny0")
    uid = launch.plugin_uid(settings, record.uid_index)
    backend = launch.serving_backend(settings)
    out: dict[str, list[float]] = {"bare": [], "baseline": [], "this tree": []}
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), flush=True)
    for i in range(args.runs):
        for k, kind in enumerate(out):
            spec = launch.build(settings, record, generation=3 * i + k + 1)
            listener = launch.prepare(settings, spec, uid, backend=backend)
            if kind == "bare":
                listener.close()
                cmd, env = bare_argv(home, "tiny0")
                t0 = time.perf_counter()
                proc = spawn_bare(cmd, env, spec.instance_socket)
            else:
                cmd = list(spec.argv)
                if kind == "baseline":
                    cmd = [args.baseline_python, "-I", "-m", "sandbox_runner", "--policy",
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
        med = statistics.median(xs)
        print(f"spawn-to-ready {kind:10} median {med:6.1f} ms  {med / bare:4.2f}x bare   "
              f"({', '.join(f'{x:.0f}' for x in xs)})", flush=True)
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), flush=True)
    return 0


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
