"""The internet-facing web tier runs as its own unprivileged user and can do exactly what it needs: serve its
inherited socket, read the routing snapshot, ask the supervisor for status/wake/active, and connect to the
plugins' sockets. Proven by attacks that fail, made with the web tier's own uid."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import traceback
from pathlib import Path
from typing import Any

import pytest

from host import control
from host.errors import HostError
from host.webtier import drop_privileges
from tests.integration.harness import ServedHost, descendants, run_host, short_home, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a non-root host runs its web tier as itself")


def ids(pid: int) -> dict[str, list[int]]:
    """Uid/Gid (real, effective, saved, fs) and the capability sets of a live process, as ps would show."""
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    out = {k: [int(v) for v in fields[k].split()] for k in ("Uid", "Gid")}
    out["Groups"] = [int(v) for v in fields["Groups"].split()]
    out["Caps"] = [int(fields[k], 16) for k in ("CapPrm", "CapEff", "CapAmb")]
    out["NoNewPrivs"] = [int(fields["NoNewPrivs"])]
    return out


def web_processes(host: ServedHost) -> tuple[int, set[int]]:
    web = host.status()["web"]["pid"]
    assert isinstance(web, int)
    return web, descendants(web)


def test_web_tier_and_its_workers_run_unprivileged(served: ServedHost) -> None:
    web, workers = web_processes(served)
    assert workers, "gunicorn has no worker"
    for pid in {web, *workers}:
        got = ids(pid)
        uid, gid = got["Uid"][0], got["Gid"][0]
        assert uid != 0 and gid != 0
        assert got["Uid"] == [uid] * 4 and got["Gid"] == [gid] * 4  # real, effective, saved and fs ids
        assert got["Groups"] == [] and got["Caps"] == [0, 0, 0] and got["NoNewPrivs"] == [1]
    # the default: a uid of this home's own, from the machine-wide file that also allocates plugin uids
    web_user = served.status()["web"]
    assert ids(web)["Uid"][0] == web_user["uid"] == web_user["gid"]
    owners = json.loads(Path("/var/lib/plugin-host/uids.json").read_text())["owners"]
    assert owners[str(web_user["uid"])] == {"home": str(served.home), "plugin": "@web"}


def test_two_homes_never_share_a_web_uid(served: ServedHost) -> None:
    with short_home() as home:
        other = ServedHost(home).start()
        try:
            mine, theirs = served.status()["web"], other.status()["web"]
            assert mine["uid"] != theirs["uid"] and mine["gid"] != theirs["gid"]
            assert ids(web_processes(other)[0])["Uid"][0] == theirs["uid"]
        finally:
            other.stop()


def _as_web_user(host: ServedHost, attempt: Any) -> dict[str, str]:
    """Run ``attempt(home)`` in a forked child that dropped to the web tier's uid/gid with the web tier's own
    function, reaching the home the way the web tier does (an O_PATH fd: the temp dir above it is 0700)."""
    got = ids(web_processes(host)[0])
    home_fd = os.open(host.home, os.O_PATH | os.O_DIRECTORY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            drop_privileges(got["Uid"][0], got["Gid"][0])
            out = attempt(Path(f"/proc/self/fd/{home_fd}"))
        except BaseException:
            out = {"child": traceback.format_exc()}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    os.close(home_fd)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    result: dict[str, str] = json.loads(data)
    return result


def _outcome(fn: Any) -> str:
    try:
        value = fn()
    except OSError as exc:
        return type(exc).__name__
    except HostError as exc:
        return f"refused: {exc}"
    return f"ok {value}"[:200]


def _connect(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
    return "connected"


def _web_user_attempts(home: Path) -> dict[str, str]:
    run = home / "run"
    return {
        # what it needs
        "routes": _outcome(lambda: sorted(json.loads((run / "routes.json").read_text())["plugins"])),
        "status": _outcome(lambda: sorted(control.call(run / "web.sock", "status")["plugins"])),
        "plugin socket": _outcome(lambda: _connect(run / "echo" / "http.sock")),
        # what it must not
        "registry": _outcome((home / "registry.db").read_bytes),
        "control socket": _outcome(lambda: _connect(run / "control.sock")),
        "stop": _outcome(lambda: control.call(run / "web.sock", "stop", name="echo")),
        "reload": _outcome(lambda: control.call(run / "web.sock", "reload")),
        "list plugin run dir": _outcome(lambda: os.listdir(run / "echo")),
        "logs": _outcome(lambda: os.listdir(home / "logs")),
        "data": _outcome(lambda: os.listdir(home / "data" / "echo")),
        "plant a file in run": _outcome(lambda: (run / "routes.json.evil").write_text("{}")),
    }


def test_cant_reach_what_the_web_tier_does_not_need(served: ServedHost) -> None:
    got = _as_web_user(served, _web_user_attempts)
    assert "child" not in got, got.get("child")
    assert got["routes"] == "ok ['echo', 'example', 'notes', 'shop', 'sse']"
    assert got["status"] == "ok ['echo', 'example', 'notes', 'shop', 'sse']"
    assert got["plugin socket"] == "ok connected"
    assert got["registry"] == "PermissionError"
    assert got["control socket"] == "PermissionError"
    only = "(only status, wake, active, user_login, filter_tripped)"
    assert got["stop"] == f"refused: echo: op 'stop' is not allowed on the web socket {only}"
    assert got["reload"] == f"refused: op 'reload' is not allowed on the web socket {only}"
    assert got["list plugin run dir"] == "PermissionError"
    assert got["logs"] == "PermissionError"
    assert got["data"] == "PermissionError"
    assert got["plant a file in run"] == "PermissionError"
    assert served.plugin("echo")["state"] == "running"  # the refused stop stopped nothing


def test_web_socket_refuses_privileged_ops_whoever_asks(served: ServedHost) -> None:
    for op in ("stop", "start", "restart", "reload", "ping"):
        with pytest.raises(HostError, match=f"op '{op}' is not allowed on the web socket"):
            control.call(served.home / "run" / "web.sock", op, name="echo")
    assert served.plugin("echo")["state"] == "running"


def test_healthz_shows_no_pid_nor_reason(served: ServedHost) -> None:
    health = served.health()
    for entry in health["plugins"].values():
        assert set(entry) == {"state", "enabled", "version", "sandbox"}
    assert set(health) == {"status", "supervisor", "plugins"}


def test_a_traceback_never_reaches_a_client(served: ServedHost) -> None:
    # A snapshot the web tier cannot use makes its request handling fail with an exception.
    path = served.home / "run" / "routes.json"
    original = path.read_bytes()
    st = path.stat()

    def put(data: bytes) -> None:
        tmp = path.with_name(".routes.test")
        tmp.write_bytes(data)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)

    put(b'{"format": 1, "plugins": {"echo": {"version": "1"}}}')
    try:
        r = served.get("/plugins/echo/request")
    finally:
        put(original)
    assert r.status_code == 500
    assert r.json() == {"type": "about:blank", "title": "Internal error", "status": 500,
                        "detail": "the host failed to handle this request; see the host log"}
    assert served.get("/plugins/echo/request").status_code == 200
    assert "KeyError" in served.read_log()  # the operator gets the traceback, in the host log


def _free_low_port() -> int:
    for port in range(1023, 899, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


def test_privileged_port_and_configured_web_user() -> None:
    port = _free_low_port()
    with short_home() as home:
        host = ServedHost(home, env={"HOST_WEB_USER": "699990:699991"}).start(port=port)
        try:
            assert host.health()["status"] == "ok"
            web, workers = web_processes(host)
            for pid in {web, *workers}:
                got = ids(pid)
                assert got["Uid"] == [699990] * 4 and got["Gid"] == [699991] * 4
        finally:
            host.stop()


def test_serve_refuses_root_as_the_web_user() -> None:
    with short_home() as home:
        r = run_host(home, "serve", "--create", "--bind", "127.0.0.1:1", env={"HOST_WEB_USER": "root"}, timeout=60)
    assert r.returncode == 1
    assert "HOST_WEB_USER=root: uid/gid 0; the web tier never runs as root" in r.stderr


def test_workers_fork_from_the_app_the_unprivileged_arbiter_built_once(served: ServedHost) -> None:
    """Issue 12: the arbiter builds the app (after dropping root) and its workers share it copy-on-write,
    rather than each worker importing and building its own."""
    web, workers = web_processes(served)
    uid = served.status()["web"]["uid"]
    built = re.findall(r"public app built by pid (\d+) as uid (\d+); workers fork from it", served.read_log())
    assert built.count((str(web), str(uid))) == 1  # once, by the arbiter, not as root
    assert workers and not {int(pid) for pid, _ in built} & workers  # no worker built an app of its own
    assert all(ids(pid)["Uid"] == [uid] * 4 for pid in workers)
    assert all(_parent(pid) == web for pid in workers)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _connections_of(pid: int, port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` among ``pid``'s open files (/proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    with open("/proc/net/tcp") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "01" and int(r[1].split(":")[1], 16) == port and r[9] in inodes)


def test_keep_alive_connections_spread_evenly_over_the_web_workers() -> None:
    # Issue 12: keep-alive connections stay with the worker that accepted them, and one worker could take
    # nearly all of them while the other idled. With the balancer a worker holding more than one connection
    # above the other stops accepting until that is no longer so.
    with short_home() as home:
        host = ServedHost(home, env={"HOST_WEB_WORKERS": "2"}).start()
        clients: list[socket.socket] = []
        try:
            def both() -> set[int] | None:  # the first worker may answer before the second has forked
                found = web_processes(host)[1]
                return found if len(found) == 2 else None

            workers = wait_for(both, 30, what="two web workers")
            for _ in range(12):  # one after another, each answered before the next connects
                sock = socket.create_connection(("127.0.0.1", host.port), timeout=10)
                clients.append(sock)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += sock.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200 ")
            counts = sorted(_connections_of(pid, host.port) for pid in workers)
            assert sum(counts) == 12 and counts[1] - counts[0] <= 2, counts
        finally:
            for sock in clients:
                sock.close()
            host.stop()
