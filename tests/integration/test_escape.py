"""The escape suite: a hostile plugin granted nothing tries every way out and fails with the exact error.

Each attack is a route of tests/fixtures/plugins/escape_attempt, served by a real host in a real sandbox.
The same attacks succeed exactly where the `granted` plugin's manifest grants them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_runner.probe import probe
from tests.integration.harness import FIXTURES, ServedHost, run_host, unmount_under, wait_for

GRANTED_RO = Path("/tmp/plugin-host-granted-ro")
GRANTED_RW = Path("/tmp/plugin-host-granted-rw")
GRANTED_MANIFEST = f"""
name = "granted"
version = "1.0.0"
entrypoint = "app:app"

[permissions]
environment = ["PLUGIN_HOST_TEST_GRANTED"]
network = {{ outbound = true }}
filesystem = {{ read = ["{GRANTED_RO}"], write = ["{GRANTED_RW}"] }}
"""
SECRET_ENV = "PLUGIN_HOST_TEST_SECRET"

_layers = probe()
pytestmark = pytest.mark.skipif(
    not all(v["available"] for v in _layers.values()),
    reason="sandbox layers unavailable here: "
    + ", ".join(f"{k} ({v.get('detail')})" for k, v in _layers.items() if not v["available"]),
)


@pytest.fixture(scope="module")
def jail() -> Iterator[ServedHost]:
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    home = d / "h"
    # `granted`: the very same hostile code, under a manifest that grants some of what it attempts
    granted = d / "granted"
    shutil.copytree(FIXTURES / "escape_attempt", granted)
    (granted / "plugin.toml").write_text(GRANTED_MANIFEST)
    for src in (FIXTURES / "escape_attempt", FIXTURES / "echo", granted):
        run_host(home, "install", str(src), "--yes", check=True)
    for p in (GRANTED_RO, GRANTED_RW):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(mode=0o755)
    (GRANTED_RO / "readme.txt").write_text("granted read")
    os.chmod(GRANTED_RW, 0o777)
    host = ServedHost(home, env={SECRET_ENV: "hunter2", "PLUGIN_HOST_TEST_GRANTED": "yes"})
    host.start(wait_plugins=("escape-attempt", "echo", "granted"))
    victim = home / "data" / "echo" / "secret.txt"
    victim.write_text("echo's private data")
    try:
        yield host
    finally:
        host.stop()
        unmount_under(d)  # disk images a killed host left mounted
        shutil.rmtree(d, ignore_errors=True)
        for p in (GRANTED_RO, GRANTED_RW):
            shutil.rmtree(p, ignore_errors=True)


def attack(host: ServedHost, route: str, plugin: str = "escape-attempt", **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{host.url}/plugins/{plugin}/{route}", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def denied(result: dict[str, Any], errno_name: str) -> None:
    assert result["ok"] is False, f"the attack succeeded: {result}"
    assert result["errno"] == errno_name, result


# -- files --------------------------------------------------------------------------------------------

def test_cant_read_etc_shadow(jail: ServedHost) -> None:
    denied(attack(jail, "read", path="/etc/shadow"), "ENOENT")


def test_cant_read_the_registry(jail: ServedHost) -> None:
    denied(attack(jail, "read", path=str(jail.home / "registry.db")), "ENOENT")


def test_cant_read_other_plugins_data(jail: ServedHost) -> None:
    denied(attack(jail, "read", path=str(jail.home / "data" / "echo" / "secret.txt")), "ENOENT")


def test_cant_read_other_plugins_code(jail: ServedHost) -> None:
    echo_app = next((jail.home / "plugins" / "echo").glob("*/bundle/app.py"))
    denied(attack(jail, "read", path=str(echo_app)), "ENOENT")
    assert attack(jail, "listdir", path=str(jail.home / "plugins"))["value"] == ["escape-attempt"]
    denied(attack(jail, "listdir", path=str(jail.home / "data" / "echo")), "ENOENT")


def test_cant_read_the_hosts_environment(jail: ServedHost) -> None:
    env = attack(jail, "env")["value"]
    assert SECRET_ENV not in env
    assert "PLUGIN_HOST_TEST_GRANTED" not in env
    assert not any(k.startswith("HOST_") for k in env)


def test_cant_write_its_own_code(jail: ServedHost) -> None:
    bundle = attack(jail, "env")["value"]["PLUGIN_BUNDLE"]
    denied(attack(jail, "write", path=f"{bundle}/app.py"), "EROFS")


def test_cant_write_outside_its_data_dir(jail: ServedHost) -> None:
    denied(attack(jail, "write", path="/usr/lib/pwned"), "EROFS")
    denied(attack(jail, "write", path=str(jail.home / "registry.db")), "EACCES")  # Landlock: not granted
    # /tmp is writable but private to the instance: nothing reaches the host's /tmp
    marker = f"/tmp/plugin-host-pwned-{os.getpid()}"
    assert attack(jail, "write", path=marker)["ok"] is True
    assert not os.path.exists(marker)


def test_can_write_its_own_data_dir(jail: ServedHost) -> None:
    data = attack(jail, "env")["value"]["PLUGIN_DATA_DIR"]
    assert attack(jail, "write", path=f"{data}/ok.txt")["ok"] is True
    assert (jail.home / "data" / "escape-attempt" / "ok.txt").read_text() == "pwned"


def test_cant_reach_shadow_through_a_symlink(jail: ServedHost) -> None:
    denied(attack(jail, "symlink", target="/etc/shadow"), "ENOENT")


def test_cant_make_the_root_host_chown_through_a_planted_symlink(jail: ServedHost) -> None:
    victim = Path(tempfile.mkdtemp(prefix="plugin-host-victim-", dir="/tmp"))
    os.chmod(victim, 0o755)
    try:
        before = jail.plugin("escape-attempt")["pid"]
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{jail.url}/plugins/escape-attempt/plant_tmp", params={"target": str(victim)}, timeout=10)

        def restarted() -> bool:
            p = jail.plugin("escape-attempt")
            return p["state"] == "running" and p["pid"] not in (None, before)

        wait_for(restarted, 30, what="the plugin to be restarted")
        st = victim.stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o755")
        tmp = jail.home / "data" / "escape-attempt" / ".tmp"
        assert tmp.is_dir() and not tmp.is_symlink()
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_cant_reach_or_replace_its_own_socket_path(jail: ServedHost) -> None:
    # The host binds the socket in a root-only dir and hands the plugin the fd: the path the proxy
    # connects through is not even visible, so it cannot be swapped for a link to another service.
    run_dir = jail.home / "run" / "escape-attempt"
    denied(attack(jail, "listdir", path=str(run_dir)), "ENOENT")
    denied(attack(jail, "symlink", target=str(run_dir / "http.sock")), "ENOENT")
    st = os.stat(run_dir)
    # root's, with pass-through for the web tier's group only, never the plugin's
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, jail.status()["web"]["gid"], "0o710")


# -- network ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "kind"), [("inet", "tcp"), ("inet", "udp"), ("inet6", "tcp"),
                                              ("inet6", "udp"), ("netlink", "raw"), ("packet", "raw")])
def test_cant_open_network_sockets(jail: ServedHost, family: str, kind: str) -> None:
    denied(attack(jail, "socket", family=family, type=kind), "EAFNOSUPPORT")


def test_cant_connect_to_loopback_tcp(jail: ServedHost) -> None:
    denied(attack(jail, "socket", family="inet", type="tcp", connect=f"127.0.0.1:{jail.port}"), "EAFNOSUPPORT")


def test_cant_connect_to_another_plugins_socket(jail: ServedHost) -> None:
    denied(attack(jail, "unix", path=str(jail.home / "run" / "echo" / "http.sock")), "ENOENT")


def test_cant_connect_to_the_control_socket(jail: ServedHost) -> None:
    denied(attack(jail, "unix", path=str(jail.home / "run" / "control.sock")), "ENOENT")


def test_cant_connect_to_the_web_tiers_socket(jail: ServedHost) -> None:
    denied(attack(jail, "unix", path=str(jail.home / "run" / "web.sock")), "ENOENT")


def test_cant_connect_to_an_abstract_socket(jail: ServedHost) -> None:
    name = f"plugin-host-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen(1)
        denied(attack(jail, "unix", path="@" + name), "ECONNREFUSED")


# -- processes and the kernel ---------------------------------------------------------------------------

def test_cant_see_host_processes(jail: ServedHost) -> None:
    pids = attack(jail, "pids")["value"]
    assert jail.proc is not None
    assert jail.proc.pid not in pids or max(pids) < 10
    assert len(pids) <= 4  # gunicorn master (pid 1) + its worker + this request's helpers


def test_cant_signal_host_processes(jail: ServedHost) -> None:
    assert jail.proc is not None
    denied(attack(jail, "kill", pid=str(jail.proc.pid)), "ESRCH")


def test_cant_ptrace(jail: ServedHost) -> None:
    denied(attack(jail, "ptrace"), "EPERM")


def test_cant_mount(jail: ServedHost) -> None:
    denied(attack(jail, "mount"), "EPERM")


def test_cant_create_namespaces(jail: ServedHost) -> None:
    denied(attack(jail, "unshare"), "EPERM")


def test_cant_hold_capabilities_or_become_root(jail: ServedHost) -> None:
    status = attack(jail, "caps")["value"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert status["Uid"].split()[0] != "0"
    denied(attack(jail, "setuid"), "EPERM")


def test_each_plugin_runs_as_its_own_user(jail: ServedHost) -> None:
    a = attack(jail, "whoami")["value"]
    b = attack(jail, "whoami", plugin="granted")["value"]
    assert a["uid"] != 0 and b["uid"] != 0 and a["uid"] != b["uid"]


# -- resources ------------------------------------------------------------------------------------------

def test_cant_exceed_its_process_limit(jail: ServedHost) -> None:
    denied(attack(jail, "fork", n="100"), "EAGAIN")


def test_cant_exceed_its_file_size_limit(jail: ServedHost) -> None:
    denied(attack(jail, "bigfile", mb="5"), "EFBIG")


def test_cant_exceed_its_cpu_time(jail: ServedHost) -> None:
    r = httpx.get(f"{jail.url}/plugins/escape-attempt/spin", timeout=60)
    assert r.json()["returncode"] == -signal.SIGXCPU


def test_cant_exceed_its_memory_and_only_it_pays(jail: ServedHost) -> None:
    stop = threading.Event()
    other: list[int] = []

    def neighbour() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            other.append(httpx.get(f"{jail.url}/plugins/echo/status/200", timeout=10).status_code)

    t = threading.Thread(target=neighbour)
    t.start()
    try:
        r = httpx.get(f"{jail.url}/plugins/escape-attempt/alloc", params={"mb": "512"}, timeout=60)
    finally:
        stop.set()
        t.join(30)
    # the worker was killed (502) or the allocation failed inside the plugin; never 200 with 512 MiB
    assert r.status_code == 502 or r.json() == {"ok": False, "errno": None, "error": "MemoryError: "}, r.text
    assert other and set(other) == {200}
    # still serving: "degraded" (with the OOM as its reason) when its worker was killed, else "running"
    st = wait_for(lambda: (p := jail.plugin("escape-attempt")).get("state") in ("running", "degraded") and p,
                  60, what="escape-attempt serving again")
    assert st["state"] == "running" or st["last_exit"]["cause"] == "out_of_memory", st
    assert attack(jail, "whoami")["ok"] is True


# -- grants -------------------------------------------------------------------------------------------

def test_granted_paths_env_and_network_work_exactly(jail: ServedHost) -> None:
    assert attack(jail, "read", plugin="granted", path=str(GRANTED_RO / "readme.txt"))["value"] == "granted read"
    denied(attack(jail, "write", plugin="granted", path=str(GRANTED_RO / "x")), "EROFS")
    assert attack(jail, "write", plugin="granted", path=str(GRANTED_RW / "x"))["ok"] is True
    assert (GRANTED_RW / "x").read_text() == "pwned"
    env = attack(jail, "env", plugin="granted")["value"]
    assert env["PLUGIN_HOST_TEST_GRANTED"] == "yes"
    assert SECRET_ENV not in env
    denied(attack(jail, "read", plugin="granted", path="/etc/shadow"), "ENOENT")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        # outbound = true is the public internet, never the host: the plugin's own namespace has no route to
        # the host's loopback, and Landlock allows connects only to the egress listeners (test_egress.py)
        denied(attack(jail, "socket", plugin="granted", family="inet", type="tcp", connect=f"127.0.0.1:{port}"),
               "EACCES")
    # outbound only: listening on a TCP port stays denied
    denied(attack(jail, "socket", plugin="granted", family="inet", type="tcp", bind="0"), "EACCES")
