"""The ONE place a manifest becomes a sandbox policy and a command line (everything not granted is denied).

Used for the running plugin (gunicorn) and, at install time, for the plugin's own code (the entrypoint
check) and for pip (which runs build scripts of sdists): all plugin-supplied code runs confined.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import plugin_settings, rootfs
from host.egress import point as egress
from host.egress.netns import PROXY_PORT
from host.egress.rules import Grant
from host.hooks import signing
from host.layout import Layout
from host.pip_options import UvCommand, index_options, local_paths
from host.quota import Quota, ensure_mounted
from host.registry import PluginRecord
from host.runtime import GUNICORN_CONFIG, RUNTIME_DIR, WSGI_TARGET
from host.sandbox_user import write_etc_files
from manifests.setting_rules import Value
from manifests.view import manifest_view
from sandbox_runner.cli import command_line
from sandbox_runner.layers import seccomp
from sandbox_runner.policy import LAYERS, Network, Policy, Resources

if TYPE_CHECKING:
    from host.settings import HostSettings
    from manifests import Manifest
    from manifests.model import Network as NetworkGrant

MiB = 1024 * 1024
ROOT_ONLY_LAYERS = ("uid", "cgroup")
# Memory, processes and file size for pip: building an sdist needs more than a small Flask app.
PIP_RESOURCES = Resources(memory_bytes=2048 * MiB, processes=256, open_files=4096, file_size_bytes=1024 * MiB)


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one plugin instance: argv for the supervisor, its policy, and its sockets."""

    name: str
    argv: list[str]
    policy: Policy
    policy_path: Path
    socket: Path  # the stable path the proxy connects to (a symlink to the live instance's socket)
    instance_socket: Path  # where this instance binds
    manifest: Manifest
    env: dict[str, str] = field(repr=False)  # holds the hook-signing secret
    install_id: str
    # The plugin's settings (host.plugin_settings) for its settings.json; secrets among them: never printed.
    settings: dict[str, Value] = field(default_factory=dict, repr=False)


def egress_uid(settings: HostSettings) -> int | None:
    """The egress process's own unprivileged uid (root hosts), claimed from the machine-wide allocation as
    the home's ``@egress``: it owns no file, and no other home's egress, web tier or plugin shares it (so a
    compromised egress process of one host cannot signal another host's)."""
    if os.geteuid() != 0:
        return None
    from host.uids import UidFile

    return UidFile(settings.uid_file).claim(settings.home_dir, "@egress", settings.uid_base)


def plugin_uid(settings: HostSettings, uid_index: int) -> int | None:
    """Root hosts run each plugin under its own uid; others rely on a user namespace."""
    return settings.uid_base + uid_index if os.geteuid() == 0 else None


def _required(settings: HostSettings, uid: int | None) -> tuple[str, ...]:
    if settings.sandbox != "strict":
        return ()
    return tuple(layer for layer in LAYERS if uid is not None or layer not in ROOT_ONLY_LAYERS)


def cgroup_name(settings: HostSettings, name: str, instance: str) -> str:
    """Unique per home and per instance: two hosts on one machine, or an old and a new instance of the
    same plugin during a zero-downtime restart, never share (or remove each other's) cgroup."""
    home = hashlib.sha256(str(settings.home_dir).encode()).hexdigest()[:8]
    return f"plugin-host-{home}-{name}-{instance}"


def runtime_policy(settings: HostSettings, manifest: Manifest, install: Path, uid: int | None,
                   instance: str = "check") -> Policy:
    """The plugin's policy, exactly as its manifest grants: used when serving and when checking at install."""
    layout = Layout(settings.home_dir)
    name = manifest.name
    bundle, venv, data = install / "bundle", install / "venv", layout.data(name)
    perms = manifest.permissions
    res = perms.resources
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
        # Who it is (its /etc/passwd entry says the same, see host.sandbox_user): getpass.getuser() reads these.
        "USER": name,
        "LOGNAME": name,
    }
    env.update({var: os.environ[var] for var in perms.environment if var in os.environ})
    if perms.network.enabled:
        env.update(egress.proxy_env())
    return Policy(
        name=name,
        ro_paths=(str(install), sys.base_prefix, *perms.filesystem.read),
        # Not its socket dir: the host binds the socket and hands it over (Policy.listen_fd), so the plugin
        # cannot swap the path the host connects to.
        rw_paths=(str(data), *perms.filesystem.write),
        env=env,
        cwd=str(bundle),
        uid=uid,
        gid=uid,
        network=plugin_network(perms.network),
        resources=Resources(
            memory_bytes=res.memory_mb * MiB,
            cpu_seconds=res.cpu_seconds,
            cpu_percent=res.cpu_percent,
            processes=res.processes,
            open_files=res.open_files,
            file_size_bytes=res.file_size_mb * MiB,
        ),
        cgroup_name=cgroup_name(settings, name, instance) if uid is not None else None,
        required=_required(settings, uid),
        # root-only (run/ is 0711 and not mounted in the sandbox): the plugin cannot forge what was applied
        # nor how it ended
        report_path=str(layout.sandbox_report(name)),
        exit_path=str(layout.exit_report(name, instance)),
    )


def plugin_network(net: NetworkGrant) -> Network:
    """A granted plugin reaches only its own namespace's listeners: the egress proxy and the fixed ones
    (the namespace fd is added at prepare time). Without a grant: a new empty namespace."""
    if not net.enabled:
        return Network()
    grant = Grant.from_network(net)
    return Network(enabled=True, connect_ports=(PROXY_PORT, *sorted({f.port for f in egress.fixed_binds(grant)})))


def pip_policy(settings: HostSettings, name: str, install: Path, cache: Path, uid: int | None,
               uv: UvCommand | None = None, shared: Path | None = None, online: bool = True) -> Policy:
    """pip with network (to reach the index) but writing only the new venv and a scratch dir (its HOME,
    TMPDIR and ``cache``, inside it) which the installer removes when pip is done.

    Build code of sdists runs in here, so no operator PIP_* variable and no pip.conf reaches it: the index
    configuration comes as explicit options (host.pip_options); the local paths those name are mounted.
    ``shared``: the home's wheel cache (host.wheel_cache), mounted read-only; ``online=False``: no network at
    all (the installer's first attempt, from that cache and the local find-links only)."""
    tmp = install / ".tmp"
    env = {
        "PATH": f"{install / 'venv'}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp),  # fresh per install: nothing a build writes under ~ outlives it
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "PIP_CACHE_DIR": str(cache),
        "PIP_CONFIG_FILE": os.devnull,  # no config file at all: not the machine's, not one a build planted
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **egress.proxy_env(),
    }
    tool: tuple[str, ...] = ()
    if uv is not None:
        # uv reads no configuration either (UV_NO_CONFIG), never downloads a Python, and caches only in here
        env.update({"UV_CACHE_DIR": str(cache), "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", **uv.env})
        tool = (uv.binary,)
    return Policy(
        name=name,
        ro_paths=(str(install / "requirements.txt"), sys.base_prefix, *tool,
                  *local_paths(index_options(settings.pip_args, wheelhouse=settings.wheelhouse)),
                  *((str(shared),) if shared is not None else ())),
        rw_paths=(str(install / "venv"), str(cache), str(tmp)),
        env=env,
        cwd=str(install),
        uid=uid,
        gid=uid,
        # Its own namespace: the index hosts through the egress point, nothing else (netns_fd added by the
        # installer). Without an egress point (non-root host) pip shares the host's network.
        network=Network(enabled=True, connect_ports=(PROXY_PORT,)) if online else Network(enabled=False),
        resources=PIP_RESOURCES,
        cgroup_name=cgroup_name(settings, name, "pip") if uid is not None else None,
        required=_required(settings, uid),
        exit_path=str(Layout(settings.home_dir).exit_report(name, "pip")),
    )


def with_user(settings: HostSettings, policy: Policy, uid: int | None) -> Policy:
    """The policy with the plugin's own /etc/passwd and /etc/group (host.sandbox_user), freshly written."""
    return dataclasses.replace(policy, etc_files=write_etc_files(Layout(settings.home_dir), policy.name, uid))


def write_policy(policy: Policy, path: Path) -> None:
    """Write ``policy`` for the runner, with its seccomp filter compiled here (see :func:`seccomp_filter`)."""
    if policy.seccomp_filter is None:
        policy = dataclasses.replace(policy, seccomp_filter=seccomp_filter(seccomp.allowed_families(policy)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(policy.to_json())
    os.chmod(tmp, 0o600)
    tmp.replace(path)


@functools.cache
def seccomp_filter(allowed_families: frozenset[int]) -> tuple[str, str] | None:
    """The seccomp filter for policies that allow these socket families, compiled once per host process:
    each runner start would otherwise load libseccomp (pyseccomp and typing, ~20 ms). None when libseccomp is
    unusable here: the runner then tries itself, and reports the layer unavailable the same way."""
    bpf, detail = seccomp.compile_bpf(allowed_families)
    return (bpf.hex(), detail) if bpf is not None else None


def confined(policy_path: Path, cmd: list[str]) -> list[str]:
    return command_line(str(policy_path), cmd)


def build(settings: HostSettings, record: PluginRecord, generation: int = 1,
          stored_settings: Mapping[str, Any] | None = None, backend: str = "auto") -> LaunchSpec:
    """``stored_settings``: the operator's values for the manifest's [settings] (Registry.plugin_settings);
    MissingSettings when a required one has none. ``backend``: see :func:`serving_backend`; it only ever
    replaces "auto", and only where namespaces are required."""
    layout = Layout(settings.home_dir)
    manifest = manifest_view(record.manifest, f"registry:{record.name}")  # validated at install
    values = plugin_settings.for_start(manifest, stored_settings or {})
    name = manifest.name
    install = layout.install_dir(name, record.install_id)
    venv, data, run_dir = install / "venv", layout.data(name), layout.run_dir(name)
    # Each instance binds its own socket so a restart can start the new one before the old one stops.
    instance_sock = run_dir / f"{generation}.sock"
    perms = manifest.permissions
    res = perms.resources
    policy = runtime_policy(settings, manifest, install, plugin_uid(settings, record.uid_index), str(generation))
    # A fresh hook-signing secret for every start (host.hooks.signing): an old instance's cannot sign for the new.
    policy = dataclasses.replace(policy, env={**policy.env, **plugin_settings.environment(manifest, values, data),
                                              signing.SECRET_ENV: signing.new_secret()})
    if backend == "bwrap" and policy.backend == "auto" and "namespaces" in policy.required:
        # No resident runner per plugin: it becomes bwrap, the supervisor is bwrap's parent and does what the
        # runner did after the command (host.supervisor.process). Only when bwrap is sure to be the backend:
        # with "auto" the runner may fall back to the syscalls backend, which stays resident, and the
        # supervisor must then treat the instance as what it is.
        policy = dataclasses.replace(policy, backend="bwrap", resident=False)
    gunicorn = [
        f"{venv}/bin/python", "-m", "gunicorn",
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
        "--chdir", str(install / "bundle"),
        "--pythonpath", str(install / "bundle"),
        # ours, not a gunicorn.conf.py the bundle may hold: it reports dying workers (host.runtime)
        "--config", str(install / GUNICORN_CONFIG),
    ]
    if _supports_no_control_socket(install):
        gunicorn.append("--no-control-socket")
    gunicorn.append(WSGI_TARGET)
    # One file per plugin: the runner reads it once at start, so a restart may overwrite it.
    policy_path = layout.run / f".{name}.policy.json"
    return LaunchSpec(name, confined(policy_path, gunicorn), policy, policy_path, layout.socket(name),
                      instance_sock, manifest, policy.env, record.install_id, values)


def with_host_api(spec: LaunchSpec, sock: Path, token: str, user_key: str | None = None) -> LaunchSpec:
    """The instance with its host API (host.hostapi): its own socket's directory mounted read-only (never
    another plugin's: with bubblewrap the others are not in its filesystem at all, and on a root host their
    directories are closed to its gid), the socket path and its per-start token in the environment, and
    for ``users:read`` the key that verifies the host's user assertions (host.identity)."""
    env = {**spec.policy.env, "PLUGIN_HOST_API": str(sock), "PLUGIN_HOST_API_TOKEN": token}
    if user_key is not None:
        env["PLUGIN_HOST_USER_KEY"] = user_key
    policy = dataclasses.replace(spec.policy, ro_paths=(*spec.policy.ro_paths, str(sock.parent)), env=env)
    return dataclasses.replace(spec, policy=policy, env=env)


def serving_backend(settings: HostSettings) -> str:
    """The runner backend every serving policy names, decided once per supervisor: "bwrap" when the sandbox
    is strict (namespaces are required) and bubblewrap works here, so that the runner does not probe it again
    at each start (a fork and exec of bwrap, and the import of subprocess, on every start and cold start);
    "auto" otherwise (the runner probes, and a weak sandbox falls back to the syscalls backend). Fails closed
    either way: should bubblewrap stop working later, a strict start fails as it did after its probe."""
    if settings.sandbox != "strict":
        return "auto"
    from sandbox_runner.bwrap import usable

    return "bwrap" if usable()[0] is not None else "auto"


def prepare(settings: HostSettings, spec: LaunchSpec, uid: int | None, netns_fd: int | None = None) -> socket.socket:
    """Ready everything an instance needs and bind its listening socket (in the root-only socket dir);
    the policy hands the socket to the plugin. The caller passes it to the runner and then closes it.
    ``netns_fd``: the plugin's egress namespace (the runner must inherit it too)."""
    # The data dir is a mount of the plugin's quota image (mounted once, shared by every instance).
    ensure_mounted(settings, spec.name, Quota.of(spec.manifest.permissions.resources), uid)
    rootfs.prepare_plugin_dirs(Layout(settings.home_dir), spec.name, Path(spec.policy.ro_paths[0]), uid)
    install_gunicorn_config(Path(spec.policy.ro_paths[0]))
    if spec.manifest.settings:
        plugin_settings.write_settings_file(Layout(settings.home_dir), spec.name, spec.settings, uid)
    spec.instance_socket.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(spec.instance_socket))
        listener.listen(1024)
        policy = dataclasses.replace(spec.policy, listen_fd=listener.fileno())
        policy = with_user(settings, policy, uid)
        if netns_fd is not None:
            hosts = Layout(settings.home_dir).run / f".{spec.name}.hosts"
            tmp = hosts.with_suffix(".tmp")
            tmp.write_text(egress.hosts_file(Grant.from_network(spec.manifest.permissions.network)))
            os.chmod(tmp, 0o644)
            tmp.replace(hosts)
            policy = dataclasses.replace(policy, network=dataclasses.replace(policy.network, netns_fd=netns_fd),
                                         etc_files=(*policy.etc_files, ("/etc/hosts", str(hosts))))
        write_policy(policy, spec.policy_path)
    except BaseException:
        listener.close()
        raise
    return listener


def install_gunicorn_config(install: Path) -> None:
    """Put the host's gunicorn config next to the venv (root-owned, read-only to the plugin), also into
    installs made before it existed."""
    target = install / GUNICORN_CONFIG
    text = (RUNTIME_DIR / GUNICORN_CONFIG).read_bytes()
    try:
        if target.read_bytes() == text:
            return
    except OSError:
        pass
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.chmod(tmp, 0o644)
    tmp.replace(target)


RUNTIME_FACTS = "runtime.json"  # root-written, next to (not inside) the venv


def record_runtime_facts(install: Path) -> None:
    """Learn once, at install, what the venv's gunicorn supports; launches read the root-owned answer
    instead of reading plugin-writable files as root on every start."""
    facts = {"no_control_socket": b"no-control-socket" in rootfs.read_beneath(install / "venv", _GUNICORN_CONFIG)}
    (install / RUNTIME_FACTS).write_text(json.dumps(facts))


_GUNICORN_CONFIG = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages/gunicorn/config.py"


def _supports_no_control_socket(install: Path) -> bool:
    """gunicorn >= 27 opens a control socket under ~ unless told not to; older ones reject the flag."""
    try:
        return bool(json.loads((install / RUNTIME_FACTS).read_text()).get("no_control_socket"))
    except (OSError, ValueError):
        return False
