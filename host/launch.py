"""The ONE place a manifest becomes a sandbox policy and a command line (everything not granted is denied)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from host.layout import Layout
from host.registry import PluginRecord
from host.runtime import WSGI_TARGET
from host.settings import HostSettings
from manifests import Manifest, parse_manifest
from sandbox_runner.policy import LAYERS, Network, Policy, Resources

MiB = 1024 * 1024
# What every plugin may always see besides its own files: the base Python runtime (read-only).
# System library dirs (/usr, /lib, ...) are added by the runner itself.
ROOT_ONLY_LAYERS = ("uid", "cgroup")


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one plugin: argv for the supervisor, the policy file it refers to, and the socket."""

    name: str
    argv: list[str]
    policy: Policy
    policy_path: Path
    socket: Path  # the stable path the proxy connects to (a symlink to the live instance's socket)
    instance_socket: Path  # where this instance binds
    manifest: Manifest
    env: dict[str, str]
    install_id: str


def plugin_uid(settings: HostSettings, record: PluginRecord) -> int | None:
    """Root hosts run each plugin under its own uid; others rely on a user namespace."""
    return settings.uid_base + record.uid_index if os.geteuid() == 0 else None


def build(settings: HostSettings, record: PluginRecord, generation: int = 1) -> LaunchSpec:
    layout = Layout(settings.home_dir)
    manifest = parse_manifest(record.manifest, f"registry:{record.name}")
    name = manifest.name
    install = layout.install_dir(name, record.install_id)
    bundle, venv = install / "bundle", install / "venv"
    data, run_dir, sock = layout.data(name), layout.run_dir(name), layout.socket(name)
    # Each instance binds its own socket so a restart can start the new one before the old one stops.
    instance_sock = run_dir / f"{generation}.sock"
    perms = manifest.permissions
    res = perms.resources
    uid = plugin_uid(settings, record)

    env = {
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(data),
        "TMPDIR": str(data / ".tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # the bundle and venv are read-only
        "VIRTUAL_ENV": str(venv),
        "PLUGIN_NAME": name,
        "PLUGIN_ENTRYPOINT": manifest.entrypoint,
        "PLUGIN_BUNDLE": str(bundle),
        "PLUGIN_PREFIX": f"/plugins/{name}",
        "PLUGIN_DATA_DIR": str(data),
    }
    for var in perms.environment:
        if var in os.environ:
            env[var] = os.environ[var]

    required = tuple(layer for layer in LAYERS if uid is not None or layer not in ROOT_ONLY_LAYERS)
    policy = Policy(
        name=name,
        ro_paths=(str(install), sys.base_prefix, *perms.filesystem.read),
        rw_paths=(str(data), str(run_dir), *perms.filesystem.write),
        env=env,
        cwd=str(bundle),
        uid=uid,
        gid=uid,
        network=Network(enabled=perms.network.outbound, connect_ports=perms.network.ports),
        resources=Resources(
            memory_bytes=res.memory_mb * MiB,
            cpu_seconds=res.cpu_seconds,
            cpu_percent=res.cpu_percent,
            processes=res.processes,
            open_files=res.open_files,
            file_size_bytes=res.file_size_mb * MiB,
        ),
        cgroup_name=f"plugin-host-{name}" if uid is not None else None,
        required=required if settings.sandbox == "strict" else (),
        report_path=str(run_dir / "sandbox.json"),
    )
    gunicorn = [
        f"{venv}/bin/python", "-m", "gunicorn",
        "--bind", f"unix:{instance_sock}",
        "--workers", str(res.workers),
        "--threads", str(res.threads),
        "--worker-class", "gthread",
        # The proxy enforces the request timeout; gunicorn's own is a backstop for stuck workers.
        "--timeout", str(int(perms.requests.timeout_seconds) + 30),
        "--graceful-timeout", str(max(1, int(settings.stop_grace))),
        "--keep-alive", "75",
        "--worker-tmp-dir", str(data / ".tmp"),
        "--error-logfile", "-",
        "--log-level", "info",
        "--chdir", str(bundle),
        "--pythonpath", str(bundle),
    ]
    if _supports_no_control_socket(venv):
        gunicorn.append("--no-control-socket")
    gunicorn.append(WSGI_TARGET)
    policy_path = run_dir.parent / f".{name}.{generation}.policy.json"
    argv = [sys.executable, "-I", "-m", "sandbox_runner", "--policy", str(policy_path), "--", *gunicorn]
    return LaunchSpec(name, argv, policy, policy_path, sock, instance_sock, manifest, env, record.install_id)


def prepare(spec: LaunchSpec, uid: int | None) -> None:
    """Create the plugin's writable dirs with owner-only permissions and write the policy file.

    The socket dir is 0700 and owned by the plugin, so no other plugin can even reach its socket;
    a stale socket from a previous instance is removed so readiness never sees a dead one.
    """
    p = spec.policy
    data, run_dir = Path(p.rw_paths[0]), Path(p.rw_paths[1])
    for d in (data, data / ".tmp", run_dir):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        if uid is not None:
            os.chown(d, uid, uid)
    spec.instance_socket.unlink(missing_ok=True)
    install = Path(p.ro_paths[0])
    if uid is not None:
        # Plugin code is root-owned and read-only for the plugin; only its group may traverse to it.
        root = install.parent
        os.chown(root, 0, uid)
        os.chmod(root, 0o750)  # noqa: S103 - group = the plugin only
    tmp = spec.policy_path.with_suffix(".tmp")
    tmp.write_text(p.to_json())
    os.chmod(tmp, 0o600)
    tmp.replace(spec.policy_path)


def _supports_no_control_socket(venv: Path) -> bool:
    """gunicorn >= 27 opens a control socket under ~ unless told not to; older ones reject the flag."""
    for cfg in venv.glob("lib/python3*/site-packages/gunicorn/config.py"):
        return "no-control-socket" in cfg.read_text(errors="replace")
    return False
