"""Egress by destination, default deny, never the host (issue 8): every attack fails with the exact refusal,
while what is granted works — with a plain socket and through HTTP(S)_PROXY.

Every plugin has its own network namespace; inside it only the host's listeners exist (the egress proxy on
127.0.0.1:3128 and one listener per granted loopback destination). Landlock limits TCP connects to those
ports; the egress point resolves names itself and refuses loopback, link-local, private and this host's
addresses unless a destination names the address literally.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FIXTURES, ServedHost, run_host, served_plugins, short_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="per-plugin network namespaces need a root host")


class Counter:
    def __init__(self) -> None:
        self.n = 0


def http_service(counter: Counter | None = None) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A TCP service on the host's loopback (a stand-in for a database, Redis or an internal API)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"host-service"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: object, client_address: object) -> bool:
            if counter is not None:
                counter.n += 1
            return True

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def probe_plugin(dest: Path, name: str, network: str) -> Path:
    shutil.copytree(FIXTURES / "egress_probe", dest)
    (dest / "plugin.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\nentrypoint = "app:app"\n\n[permissions.network]\n{network}\n')
    return dest


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, int]]:
    granted, granted_port = http_service()
    other, other_port = http_service()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    yield {"granted": granted_port, "other": other_port, "udp": udp.getsockname()[1], "udp_fd": udp.fileno()}
    for s in (granted, other):
        s.shutdown()
        s.server_close()
    udp.close()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, services: dict[str, int]) -> Iterator[ServedHost]:
    src = tmp_path_factory.mktemp("egress")
    listed = probe_plugin(src / "listed", "listed", f'outbound = ["127.0.0.1:{services["granted"]}", "pypi.org:443"]')
    anywhere = probe_plugin(src / "anywhere", "anywhere", "outbound = true")
    with served_plugins(listed, anywhere, wait=("listed", "anywhere")) as h:
        yield h


def ask(served: ServedHost, plugin: str, path: str, **params: object) -> dict[str, object]:
    r = served.get(f"/plugins/{plugin}{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- what is granted works ------------------------------------------------------------------------------

def test_granted_loopback_port_is_reachable_with_a_plain_socket(host: ServedHost, services: dict[str, int]) -> None:
    out = ask(host, "listed", "/tcp", host="127.0.0.1", port=services["granted"], send="GET / HTTP/1.0\r\n\r\n")
    assert out["ok"] is True and "host-service" in str(out["reply"]), out


def test_granted_loopback_port_is_reachable_through_the_proxy(host: ServedHost, services: dict[str, int]) -> None:
    out = ask(host, "listed", "/http", url=f"http://127.0.0.1:{services['granted']}/")
    assert out == {"ok": True, "status": 200, "body": "host-service"}


def test_plugin_with_network_gets_the_proxy_variables(host: ServedHost) -> None:
    env = ask(host, "anywhere", "/env")
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://127.0.0.1:3128"


# -- what is not granted is refused, with the reason --------------------------------------------------------

def test_cant_reach_an_unlisted_loopback_port_with_a_plain_socket(host: ServedHost, services: dict[str, int]) -> None:
    """Landlock allows TCP connects only to the namespace's listener ports: EACCES before any packet."""
    out = ask(host, "listed", "/tcp", host="127.0.0.1", port=services["other"])
    assert out["ok"] is False and out["errno"] == "EACCES", out


def test_cant_reach_an_unlisted_loopback_port_through_the_proxy(host: ServedHost, services: dict[str, int]) -> None:
    out = ask(host, "listed", "/http", url=f"http://127.0.0.1:{services['other']}/")
    assert out["status"] == 403
    assert "loopback address, not listed in the plugin's grant" in str(out["body"])


def test_cant_reach_the_hosts_web_tier_with_outbound_true(host: ServedHost) -> None:
    out = ask(host, "anywhere", "/http", url=f"http://127.0.0.1:{host.port}/healthz")
    assert out["status"] == 403 and "loopback address" in str(out["body"]), out
    plain = ask(host, "anywhere", "/tcp", host="127.0.0.1", port=host.port)
    assert plain["errno"] == "EACCES", plain


def test_cant_reach_a_loopback_service_with_outbound_true(host: ServedHost, services: dict[str, int]) -> None:
    out = ask(host, "anywhere", "/http", url=f"http://127.0.0.1:{services['other']}/")
    assert out["status"] == 403, out
    assert ask(host, "anywhere", "/tcp", host="127.0.0.1", port=services["other"])["errno"] == "EACCES"


def test_cant_reach_cloud_metadata(host: ServedHost) -> None:
    out = ask(host, "anywhere", "/http", url="http://169.254.169.254/latest/meta-data/")
    assert out["status"] == 403 and "link-local (cloud metadata) address" in str(out["body"]), out


@pytest.mark.parametrize("addr", ["10.1.2.3", "192.168.0.1", "172.16.5.5", "[fd00::1]", "100.64.0.1", "224.0.0.1"])
def test_cant_reach_private_shared_or_multicast_ranges(host: ServedHost, addr: str) -> None:
    out = ask(host, "anywhere", "/http", url=f"http://{addr}/")
    assert out["status"] == 403 and "not listed in the plugin's grant" in str(out["body"]), out


def test_cant_reach_loopback_through_a_name_that_resolves_to_it(host: ServedHost, services: dict[str, int]) -> None:
    """DNS rebinding: the egress point resolves the name itself and checks the address it will connect to."""
    out = ask(host, "anywhere", "/http", url=f"http://localhost:{services['other']}/")
    assert out["status"] == 403 and "localhost resolves to a loopback address" in str(out["body"]), out


def test_cant_resolve_names_inside_the_sandbox(host: ServedHost) -> None:
    """Names are resolved by the egress point, never inside: no resolver is reachable from the namespace."""
    out = ask(host, "anywhere", "/resolve", name="pypi.org")
    assert out["ok"] is False, out
    assert ask(host, "listed", "/resolve", name="example.com")["ok"] is False


def test_granted_names_resolve_to_their_listener_inside(host: ServedHost) -> None:
    """A plain socket to a granted name lands on the namespace's forwarder for exactly that name and port."""
    assert ask(host, "listed", "/resolve", name="pypi.org") == {"ok": True, "addresses": ["127.77.0.1"]}


def test_udp_never_leaves_the_namespace(host: ServedHost, services: dict[str, int]) -> None:
    out = ask(host, "anywhere", "/udp", host="127.0.0.1", port=services["udp"])
    assert out["ok"] is False, out
    sock = socket.socket(fileno=os.dup(services["udp_fd"]))
    sock.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):
            sock.recvfrom(100)  # the host's UDP service on 127.0.0.1 received nothing
    finally:
        sock.close()


def test_refusals_are_logged_and_counted(host: ServedHost, services: dict[str, int]) -> None:
    ask(host, "anywhere", "/http", url="http://169.254.169.254/x")
    rows = {r["name"]: r for r in json.loads(host.cli("list", "--json").stdout)}
    assert rows["anywhere"]["egress_refused"] >= 1
    log = host.read_log()
    assert "egress refused: plugin anywhere -> 169.254.169.254:80: link-local (cloud metadata) address" in log


def test_egress_point_runs_unprivileged_with_a_uid_of_its_own(host: ServedHost) -> None:
    """It parses what plugins send: never as root, and never as a uid another home or a plugin has."""
    procs = [p for p in host.all_pids() if b"host.egress" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(procs) == 1, procs
    uids = {int(x) for x in next(line for line in Path(f"/proc/{procs[0]}/status").read_text().splitlines()
                                 if line.startswith("Uid:")).split()[1:]}
    assert len(uids) == 1 and 0 not in uids, uids
    owners = json.loads(Path("/var/lib/plugin-host/uids.json").read_text())["owners"]
    assert owners[str(uids.pop())] == {"home": str(host.home.resolve()), "plugin": "@egress"}


# -- install time ---------------------------------------------------------------------------------------

SETUP_PY = '''
import errno, socket, urllib.error, urllib.request
out = []
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    out.append("plain:connected")
except OSError as e:
    out.append("plain:" + errno.errorcode.get(e.errno, str(e.errno)))
try:
    urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=5)
    out.append("proxy:connected")
except urllib.error.HTTPError as e:
    out.append("proxy:%d" % e.code)
except Exception as e:
    out.append("proxy:" + repr(e))
raise SystemExit("EGRESS-RESULTS " + " ".join(out))
'''


def test_cant_reach_host_services_from_sdist_build_code(tmp_path: Path) -> None:
    """pip runs in its own namespace: the sdist's build code reaches the (local) index, never a host service."""
    victim_hits = Counter()
    victim, victim_port = http_service(victim_hits)
    index = tmp_path / "index"
    pkg_dir = tmp_path / "evilpkg-1.0"
    pkg_dir.mkdir()
    (pkg_dir / "setup.py").write_text(SETUP_PY.format(port=victim_port))
    (pkg_dir / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n")
    (index / "evilpkg").mkdir(parents=True)
    with tarfile.open(index / "evilpkg" / "evilpkg-1.0.tar.gz", "w:gz") as tar:
        tar.add(pkg_dir, arcname="evilpkg-1.0")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(index), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    served = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    plugin = probe_plugin(tmp_path / "plugin", "evil-build", "outbound = false")
    manifest = (plugin / "plugin.toml").read_text()
    manifest = manifest.replace('entrypoint = "app:app"\n', 'entrypoint = "app:app"\nrequirements = ["evilpkg==1.0"]\n')
    (plugin / "plugin.toml").write_text(manifest)
    try:
        with short_home() as home:
            r = run_host(home, "install", str(plugin), "--yes", env={
                "HOST_PIP_ARGS": f"--extra-index-url http://127.0.0.1:{served.server_address[1]}/"})
            assert r.returncode == 1, r.stdout + r.stderr
            logs = "".join(p.read_text(errors="replace") for p in (home / "logs" / "evil-build").glob("install-*.log"))
            assert "EGRESS-RESULTS plain:EACCES proxy:403" in logs, logs[-3000:]
            left = home / "plugins" / "evil-build"
            assert not left.exists() or not any(left.iterdir())
    finally:
        for srv in (served, victim):
            srv.shutdown()
            srv.server_close()
    assert victim_hits.n == 0
