"""The contenders of `./dev bench`, each fronting the same plugin app (bench/plugins/benchapp):

direct       the app on bare gunicorn with the argv the host gives the plugin (host.launch.build), no sandbox,
             bound to 127.0.0.1 TCP *and* a Unix socket. The load generator (wrk) speaks only TCP, so "direct"
             is driven over its TCP listener: the same client, the same loopback, no proxy in between.
host-path    a real `host serve` (default settings) on a temp home, the plugin installed the normal way:
             /plugins/benchapp/...
host-origin  the same host, origin mode (Host: benchapp.localhost:PORT)
nginx        nginx (apt; installed here when missing and root) → the bare gunicorn's Unix socket
jsp          jupyter-server-proxy (the peer; in its own venv under ~/.cache/plugin-host-bench) → the same
             bare gunicorn's Unix socket

nginx and jsp front the bare instance (the one direct uses), the host its own sandboxed instance: what a user
of each gets. Every process started here is started in its own session and killed by process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from host import launch
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.health import probe
from tests.integration.harness import ServedHost, descendants, free_port

PLUGIN = "benchapp"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plugin-host-bench"
JSP_VERSION = "jupyter-server-proxy>=4,<5"
READY = 60.0


class Skip(Exception):
    """A contender that cannot run on this machine; the message says why."""


@dataclass
class Front:
    name: str
    port: int
    prefix: str  # URL path prefix in front of the app's own paths
    backend: Path  # the Unix socket of the app instance behind this front (SSE acknowledgements go there)
    pids: Callable[[], set[int]]  # the front's processes, whose CPU time counts as the front's
    host_header: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"

    def headers(self) -> dict[str, str]:
        return {"Host": self.host_header} if self.host_header else {}


def kill(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def tree(pid: int) -> set[int]:
    return {pid} | descendants(pid)


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise Skip(f"{what} did not answer {url} within {READY:.0f} s")


def bare_argv(home: Path, plugin: str, generation: int = 900) -> tuple[list[str], dict[str, str]]:
    """gunicorn's argv and environment exactly as the host would start ``plugin``, minus the sandbox."""
    settings = HostSettings(home=home)
    record = Registry(home / "registry.db").require(plugin)
    spec = launch.build(settings, record, generation=generation)
    return spec.argv[spec.argv.index("--") + 1:], {**spec.env, "PATH": os.environ["PATH"]}


def start_bare(home: Path, sock: Path, port: int | None = None, plugin: str = PLUGIN) -> subprocess.Popen[bytes]:
    """Start bare gunicorn on ``sock`` (and 127.0.0.1:``port``); returns once it answers."""
    argv, env = bare_argv(home, plugin)
    return spawn_bare(argv, env, sock, port)


def spawn_bare(argv: list[str], env: dict[str, str], sock: Path, port: int | None = None) -> subprocess.Popen[bytes]:
    sock.unlink(missing_ok=True)
    argv = [*argv, "--bind", f"unix:{sock}"] + (["--bind", f"127.0.0.1:{port}"] if port else [])
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    wait_sock(sock, proc)
    return proc


def wait_sock(sock: Path, proc: subprocess.Popen[bytes], deadline: float = READY) -> None:
    end = time.monotonic() + deadline
    while probe(sock, "/", 2.0) is not None:  # any HTTP answer: the app is up
        if proc.poll() is not None or time.monotonic() > end:
            kill(proc)
            raise RuntimeError(f"bare gunicorn on {sock} did not become ready ({proc.returncode})")
        time.sleep(0.003)


def direct(home: Path, tmp: Path) -> Front:
    port = free_port()
    sock = tmp / "bare.sock"
    proc = start_bare(home, sock, port)
    return Front("direct", port, "", sock, lambda: tree(proc.pid), procs=[proc])


def web_tier_pids(host_pid: int) -> set[int]:
    """The web tier's gunicorn (master and workers) of `host serve` ``host_pid``: not the supervisor, not plugins."""
    out = set()
    for p in descendants(host_pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"host.webtier" in cmd or b"plugin-host-web" in cmd:
            out.add(p)
    return out


def host_fronts(host: ServedHost) -> list[Front]:
    assert host.proc is not None
    pid = host.proc.pid
    backend = host.home / "run" / PLUGIN / "http.sock"
    return [Front("host-path", host.port, f"/plugins/{PLUGIN}", backend, lambda: web_tier_pids(pid)),
            Front("host-origin", host.port, "", backend, lambda: web_tier_pids(pid),
                  host_header=f"{PLUGIN}.localhost:{host.port}")]


def ensure_apt(binary: str, package: str) -> str:
    """The binary's path, installing the Debian package when missing and root; Skip says why not."""
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Skip(f"no {binary} (as root: apt-get install {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            raise Skip(f"apt-get install {package} failed")
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not found:
        raise Skip(f"{package} installed no {binary}")
    return found


NGINX_CONF = """
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream app {{ server unix:{sock}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def nginx(tmp: Path, sock: Path, workers: int) -> Front:
    binary = ensure_apt("nginx", "nginx-light")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, sock=sock, port=port, workers=workers))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    front = Front("nginx", port, "", sock, lambda: tree(proc.pid), procs=[proc])
    try:
        wait_http(front.url("/ping"), proc, "nginx")
    except Skip:
        kill(proc)
        raise
    return front


JSP_CONFIG = """
c.IdentityProvider.token = ""
c.ServerApp.allow_root = True
c.ServerApp.disable_check_xsrf = True
c.ServerApp.open_browser = False
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = {port}
c.ServerApp.port_retries = 0
c.ServerApp.root_dir = {tmp!r}
c.ServerApp.log_level = "WARN"
c.ServerProxy.servers = {{
    "benchapp": {{"command": [], "unix_socket": {sock!r}, "absolute_url": False, "timeout": 30,
                  "launcher_entry": {{"enabled": False}}}},
}}
"""


def jsp_venv() -> Path:
    """The peer's venv (created once, kept under the cache dir); Skip when it cannot be installed."""
    venv = CACHE / "jsp"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import jupyter_server_proxy"],
                                          capture_output=True, check=False).returncode == 0:
        return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", JSP_VERSION],
                       check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise Skip(f"could not install {JSP_VERSION}: {err.decode(errors='replace').strip()[-200:]}") from exc
    return venv


def jsp(tmp: Path, sock: Path) -> Front:
    venv = jsp_venv()
    port = free_port()
    conf = tmp / "jupyter_server_config.py"
    conf.write_text(JSP_CONFIG.format(port=port, sock=str(sock), tmp=str(tmp)))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"), "JUPYTER_DATA_DIR": str(tmp / "jd"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jr"), "HOME": str(tmp)}
    log = open(tmp / "jsp.log", "wb")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen([str(venv / "bin" / "jupyter"), "server", f"--config={conf}"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    front = Front("jsp", port, f"/{PLUGIN}", sock, lambda: tree(proc.pid), procs=[proc])
    try:
        wait_http(front.url("/ping"), proc, "jupyter-server-proxy")
    except Skip as exc:
        kill(proc)
        raise Skip(f"{exc}: {(tmp / 'jsp.log').read_text(errors='replace')[-300:]}") from None
    return front
