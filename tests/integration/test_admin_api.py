"""The admin API on a real host: tokens and scopes, the admin origin, changes visible through the proxy within
2 s, audit entries naming the token, settings, install by upload (and the archives it refuses), a host restart,
and schemathesis against the OpenAPI document. One served host for the module; the tests run in file order."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, served_plugins, short_home, wait_for

API = "/admin/api/v1"
SECRET = "s3cret-value-never-shown"
MAX_UPLOAD = 16 << 20


@dataclass
class Admin:
    host: ServedHost
    token: str  # scope admin, named "ops"
    reader: str  # scope read, named "viewer"
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.host.admin_url + API, headers={**auth, **headers}, timeout=120)
        self.clients.append(client)  # closed when the module is done
        return client

    @cached_property
    def api(self) -> httpx.Client:
        return self.client(self.token)


def _token(host: ServedHost, name: str, scope: str) -> str:
    r = host.cli("token", "create", name, "--scope", scope)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def admin() -> Iterator[Admin]:
    # No waiting for a starting plugin: the proxy answers 503 at once, so a test sees when routing changed.
    with served_plugins(FIXTURES / "steady", FIXTURES / "configured", wait=("steady",),
                        env={"HOST_REQUEST_WAIT": "0", "HOST_ADMIN_MAX_UPLOAD": str(MAX_UPLOAD)}) as host:
        admin = Admin(host, _token(host, "ops", "admin"), _token(host, "viewer", "read"))
        try:
            yield admin
        finally:
            for client in admin.clients:
                client.close()


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


def test_without_a_token_or_with_a_bad_or_revoked_one_it_is_401(admin: Admin) -> None:
    r = admin.client().get("/plugins")
    assert _problem(r, 401)["title"] == "Unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    _problem(admin.client("phk_" + "A" * 43).get("/plugins"), 401)
    _problem(admin.client(admin.token, Authorization=f"Basic {admin.token}").get("/plugins"), 401)
    gone = _token(admin.host, "gone", "admin")
    assert admin.client(gone).get("/plugins").status_code == 200
    assert admin.host.cli("token", "revoke", "gone").returncode == 0
    _problem(admin.client(gone).post("/plugins/steady/disable"), 401)
    assert admin.host.plugin("steady")["state"] == "running"


def test_a_read_token_reads_but_cannot_change(admin: Admin) -> None:
    viewer = admin.client(admin.reader)
    plugins = {p["name"]: p for p in viewer.get("/plugins").json()["plugins"]}
    steady = plugins["steady"]
    assert steady["state"] == "running" and steady["enabled"] is True and steady["pid"] > 0
    assert steady["sandbox"]["level"] in ("full", "weak") and steady["risk"]["score"] >= 0
    assert any(p["permission"] == "network" for p in steady["permissions"])
    body = _problem(viewer.post("/plugins/steady/disable"), 403)
    assert "scope 'read'" in body["detail"]
    _problem(viewer.delete("/plugins/steady"), 403)
    _problem(viewer.put("/plugins/configured/settings", json={"greeting": "hi"}), 403)
    assert admin.host.plugin("steady")["state"] == "running"


def test_the_api_is_only_on_the_admin_origin(admin: Admin) -> None:
    host = admin.host
    # not on the public listener at all (not even with a token)
    public = httpx.get(f"{host.url}{API}/plugins", headers={"Authorization": f"Bearer {admin.token}"}, timeout=30)
    assert public.status_code == 404
    # a plugin's origin name pointed at the admin port: misdirected
    _problem(admin.api.get("/plugins", headers={"Host": f"steady.localhost:{host.admin_port}"}), 421)
    # a page of a plugin's origin (or of the public listener) cannot drive it, token or not
    for origin in (f"http://steady.localhost:{host.port}", host.url):
        _problem(admin.api.post("/plugins/steady/disable", headers={"Origin": origin}), 403)
    assert host.plugin("steady")["state"] == "running"
    assert admin.api.get("/plugins", headers={"Origin": host.admin_url}).status_code == 200


def test_settings_are_validated_and_secrets_are_write_only(admin: Admin) -> None:
    api = admin.api
    body = _problem(api.put("/plugins/configured/settings", json={"page_size": "many"}), 422)
    assert body["key"] == "page_size"
    _problem(api.put("/plugins/configured/settings", json={"no_such": 1}), 422)
    _problem(api.put("/plugins/configured/settings", content=b"not json", headers={"Content-Type":
                                                                                   "application/json"}), 422)
    r = api.put("/plugins/configured/settings", json={"secret_key": SECRET, "greeting": "hej"})
    assert r.status_code == 200, r.text
    assert set(r.json()["changed"]) == {"secret_key", "greeting"}
    admin.host.wait_state("configured", "running", 60)  # it was waiting for its secret
    shown = {s["key"]: s for s in api.get("/plugins/configured/settings").json()["settings"]}
    assert shown["secret_key"]["set"] is True and shown["secret_key"]["value"] == "••••"
    assert shown["greeting"]["value"] == "hej"
    r = api.put("/plugins/configured/settings", json={"greeting": None})  # null: back to the default
    assert r.status_code == 200 and r.json()["changed"] == ["greeting"]
    shown = {s["key"]: s for s in r.json()["settings"]}
    assert shown["greeting"]["set"] is False and shown["greeting"]["value"] == "hello"
    everything = api.get("/plugins/configured/settings").text + api.get("/audit?n=1000").text \
        + api.get("/plugins").text
    assert SECRET not in everything
    # the plugin got it, though
    assert admin.host.get("/plugins/configured/").status_code == 200


def _proxied(host: ServedHost, name: str) -> int:
    return host.get(f"/plugins/{name}/", timeout=10).status_code


def test_disable_and_enable_show_through_the_proxy_within_2_seconds(admin: Admin) -> None:
    host, api = admin.host, admin.api
    neighbour = host.plugin("configured")["pid"]
    assert _proxied(host, "steady") == 200
    with ThreadPoolExecutor(1) as pool:  # the answer waits for the plugin to stop; 404 comes before
        t0 = time.monotonic()
        call = pool.submit(api.post, "/plugins/steady/disable")
        wait_for(lambda: _proxied(host, "steady") == 404, 2, interval=0.05, what="steady answering 404")
        assert time.monotonic() - t0 < 2
        r = call.result(timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["plugin"]["state"] == "disabled" and r.json()["changed"] is True
    # Routed again at once (503 + Retry-After while it starts: HOST_REQUEST_WAIT=0), then served.
    t0 = time.monotonic()
    assert api.post("/plugins/steady/enable").status_code == 200
    wait_for(lambda: _proxied(host, "steady") != 404, 2, interval=0.05, what="steady routed again")
    assert time.monotonic() - t0 < 2
    wait_for(lambda: _proxied(host, "steady") == 200, 30, interval=0.05, what="steady served again")
    assert host.plugin("configured")["pid"] == neighbour  # the other plugin was not touched
    assert api.post("/plugins/steady/enable").json()["changed"] is False


def test_restart_and_logs(admin: Admin) -> None:
    api = admin.api
    before = admin.host.plugin("steady")["pid"]
    r = api.post("/plugins/steady/restart")
    assert r.status_code == 200, r.text
    assert r.json()["plugin"]["pid"] not in (None, before)
    lines = api.get("/plugins/steady/logs?n=5").json()["lines"]
    assert isinstance(lines, list) and len(lines) <= 5
    _problem(api.get("/plugins/steady/logs?n=0"), 422)
    _problem(api.post("/plugins/nosuch/restart"), 404)


def test_the_audit_log_names_the_token_and_the_local_user(admin: Admin) -> None:
    assert admin.host.cli("disable", "steady").returncode == 0
    assert admin.host.cli("enable", "steady").returncode == 0
    events = admin.client(admin.reader).get("/audit?plugin=steady&n=50").json()["events"]
    whos = {(e["kind"], e["who"]) for e in events}
    assert ("disabled", "token:ops") in whos and ("enabled", "token:ops") in whos
    assert ("restart_requested", "token:ops") in whos
    assert ("disabled", "local:root") in whos and ("enabled", "local:root") in whos
    assert {e["plugin"] for e in events} == {"steady"}
    settings = [e for e in admin.api.get("/audit?plugin=configured").json()["events"]
                if e["kind"] == "settings_changed"]
    assert settings[0]["who"] == "token:ops"
    admin.host.wait_state("steady", "running", 30)


# -- install by upload ---------------------------------------------------------------------------------------

MANIFEST = 'name = "{name}"\nversion = "{version}"\nentrypoint = "app:app"\n{extra}'
APP = "from flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef index():\n    return 'uploaded {version}'\n"


def _zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return buf.getvalue()


def _plugin(name: str, version: str = "1.0.0", extra: str = "") -> dict[str, str]:
    return {f"{name}/plugin.toml": MANIFEST.format(name=name, version=version, extra=extra),
            f"{name}/app.py": APP.format(version=version)}


def _upload(admin: Admin, data: bytes, filename: str, grant: str = "{}") -> httpx.Response:
    return admin.api.post("/plugins", files={"archive": (filename, data, "application/octet-stream")},
                          data={"grant": grant})


def _nothing_left(admin: Admin, name: str) -> None:
    home = admin.host.home
    assert list((home / "run" / "_uploads").iterdir()) == []
    unpack = home / "cache" / "unpack"
    assert not unpack.exists() or list(unpack.iterdir()) == []
    assert not (home / "plugins" / name).exists()
    names = [p["name"] for p in admin.api.get("/plugins").json()["plugins"]]
    assert name not in names


def test_a_zip_slip_archive_is_refused_and_leaves_nothing(admin: Admin, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    members = {**_plugin("slip"), f"slip/{'../' * 12}{str(target).lstrip('/')}": "pwned"}
    body = _problem(_upload(admin, _zip(members), "slip.zip"), 422)
    assert "'..' in its path" in body["detail"]
    assert not target.exists()
    _nothing_left(admin, "slip")


def test_a_symlink_to_etc_shadow_is_refused_and_leaves_nothing(admin: Admin) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in _plugin("linky").items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
        link = tarfile.TarInfo("linky/data.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    body = _problem(_upload(admin, buf.getvalue(), "linky.tar.gz"), 422)
    assert "symbolic link" in body["detail"]
    _nothing_left(admin, "linky")


def _gib_bomb(path: Path) -> None:
    """A .tar.gz holding a plugin and a 1 GiB file of zeros, in about a MiB: the zeros are one compressed MiB
    written 1024 times as gzip members (a gzip stream may have many; readers join them)."""
    head = b""
    for name, text in _plugin("bomb").items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        head += info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
    big = tarfile.TarInfo("bomb/zeros.bin")
    big.size = 1 << 30
    head += big.tobuf(tarfile.USTAR_FORMAT)  # its data follows, 1024 times one MiB
    mib = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(head))
        for _ in range(1024):
            out.write(mib)
        out.write(gzip.compress(bytes(1024)))  # the end-of-archive blocks


def test_a_1_gib_expanding_bomb_is_refused_and_leaves_nothing(admin: Admin, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    _gib_bomb(bomb)
    assert bomb.stat().st_size < 8 << 20  # a few MiB on the wire
    body = _problem(_upload(admin, bomb.read_bytes(), "bomb.tar.gz"), 422)
    assert "limit" in body["detail"]
    _nothing_left(admin, "bomb")


def test_an_archive_asking_for_more_than_granted_is_refused_with_the_difference(admin: Admin) -> None:
    extra = '[permissions.network]\noutbound = ["api.example.com:443"]\n[permissions.resources]\nmemory_mb = 512\n'
    r = _upload(admin, _zip(_plugin("greedy", extra=extra)), "greedy.zip", grant='{"resources": {"memory_mb": 1024}}')
    body = _problem(r, 409)
    assert body["excess"] == ["network.outbound: api.example.com:443 not granted"]
    _nothing_left(admin, "greedy")
    _problem(_upload(admin, _zip(_plugin("greedy")), "greedy.zip", grant="not json"), 422)
    _problem(admin.client(admin.reader).post("/plugins", files={"archive": ("g.zip", b"PK")},
                                             data={"grant": "{}"}), 403)


def test_an_upload_over_the_limit_is_413(admin: Admin) -> None:
    data = _zip(_plugin("huge")) + bytes(MAX_UPLOAD)
    body = _problem(admin.api.post("/plugins?grant={}&filename=huge.zip", content=data,
                                   headers={"Content-Type": "application/octet-stream"}), 413)
    assert body["title"]
    _nothing_left(admin, "huge")


def test_the_supervisor_takes_only_a_regular_file_of_the_web_users_from_uploads(admin: Admin) -> None:
    """What a compromised admin web tier could try with a valid token: point the supervisor at another file."""
    from host import control

    uploads = admin.host.home / "run" / "_uploads"
    link, rootfile = uploads / f"{'a' * 32}.tar", uploads / f"{'b' * 32}.zip"
    link.symlink_to("/etc/shadow")
    rootfile.write_bytes(_zip(_plugin("rooty")))  # ours (root's), not the web user's
    try:
        for upload, words in ((link.name, "not a file"), (rootfile.name, "not a regular file of the web tier's"),
                              ("../../registry.db", "bad upload reference")):
            reply = control.call(admin.host.home / "run" / "admin.sock", "install", credential=admin.token,
                                 upload=upload, grant={}, timeout=60)
            assert reply["problem"]["status"] == 422 and words in reply["problem"]["detail"], reply
    finally:
        link.unlink()
        rootfile.unlink()
    _nothing_left(admin, "rooty")


def test_install_by_upload_serves_the_plugin_and_audits_the_token(admin: Admin) -> None:
    r = _upload(admin, _zip(_plugin("uploaded")), "uploaded.zip", grant='{"resources": {"memory_mb": 512}}')
    assert r.status_code == 201, r.text
    # what the request granted is what `host export` says was granted (it used to be what the manifest asked)
    exported = json.loads(admin.host.cli("export", "--json").stdout)
    entry = next(e for e in exported["plugin"] if e["name"] == "uploaded")
    assert entry["grant"] == {"resources": {"memory_mb": 512}}
    assert r.json()["plugin"]["name"] == "uploaded" and r.json()["plugin"]["state"] == "running"
    assert admin.host.get("/plugins/uploaded/").text == "uploaded 1.0.0"
    events = admin.api.get("/audit?plugin=uploaded").json()["events"]
    assert ("installed", "token:ops") in {(e["kind"], e["who"]) for e in events}
    assert list((admin.host.home / "run" / "_uploads").iterdir()) == []
    again = _upload(admin, _zip(_plugin("uploaded")), "uploaded.zip")  # the same version: nothing to do
    assert again.status_code == 201 and again.json()["changed"] is False


def test_an_upload_of_a_new_version_upgrades_it(admin: Admin) -> None:
    r = _upload(admin, _zip(_plugin("uploaded", "1.1.0")), "uploaded-1.1.0.zip")
    assert r.status_code == 201, r.text
    assert r.json()["plugin"]["version"] == "1.1.0" and r.json()["changed"] is True
    wait_for(lambda: admin.host.get("/plugins/uploaded/").text == "uploaded 1.1.0", 10, what="1.1.0 served")


def test_a_dead_admin_web_tier_is_restarted_and_the_plugins_keep_serving(admin: Admin) -> None:
    import os
    import signal

    host = admin.host
    assert _ok(admin)  # the admin tier runs once the admin listener has been used
    web = host.status()["web"]
    pid = web["admin_pid"]
    assert pid is not None and pid != web["pid"]
    with open(f"/proc/{pid}/status") as fh:  # the admin web tier is the web user too, never root
        ids = {line.split(":")[0]: line.split()[1:] for line in fh if line.startswith(("Uid:", "Gid:"))}
    assert ids == {"Uid": [str(web["uid"])] * 4, "Gid": [str(web["gid"])] * 4}
    assert web["uid"] != 0
    os.kill(pid, signal.SIGKILL)
    assert _proxied(host, "steady") == 200
    wait_for(lambda: host.status()["web"]["admin_pid"] not in (None, pid), 15, what="a new admin web tier")
    wait_for(lambda: _ok(admin), 15, what="the admin API answering again")


def test_the_admin_web_tier_starts_with_its_first_connection() -> None:
    """Issue 12: no resident admin web tier (a gunicorn arbiter and worker) until someone uses the admin
    listener; the connection that finds it absent waits for it and is answered."""
    with short_home() as home:
        host = ServedHost(home).start()
        try:
            web = host.status()["web"]
            assert web["pid"] is not None and web["admin_pid"] is None
            assert [pid for pid in host.all_pids() if _cmdline(pid)[3:5] == ["--app", "admin"]] == []
            _problem(httpx.get(host.admin_url + API + "/plugins", timeout=60), 401)  # the admin app's answer
            pid = host.status()["web"]["admin_pid"]
            assert pid is not None and _cmdline(pid)[3:5] == ["--app", "admin"]
        finally:
            host.stop()


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode() for a in fh.read().split(b"\0") if a]  # python -m host.webtier --app APP ...
    except OSError:
        return []


def _ok(admin: Admin) -> bool:
    try:
        return admin.api.get("/plugins").status_code == 200
    except httpx.TransportError:
        return False


def test_uninstall(admin: Admin) -> None:
    r = admin.api.delete("/plugins/uploaded")
    assert r.status_code == 200, r.text
    assert r.json() == {"uninstalled": "uploaded", "kept": []}
    assert _proxied(admin.host, "uploaded") == 404
    _problem(admin.api.get("/plugins/uploaded"), 404)


def test_changes_persist_across_a_host_restart(admin: Admin) -> None:
    host, api = admin.host, admin.api
    assert api.post("/plugins/steady/disable").status_code == 200
    host.stop()
    host.start(port=host.port, wait_plugins=("configured",))
    assert _proxied(host, "steady") == 404
    steady = admin.api.get("/plugins/steady").json()["plugin"]
    assert steady["enabled"] is False and steady["state"] == "disabled"
    assert any(e["kind"] == "disabled" and e["who"] == "token:ops" for e in api.get("/audit?plugin=steady").json()[
        "events"])
    assert api.post("/plugins/steady/enable").status_code == 200
    wait_for(lambda: _proxied(host, "steady") == 200, 10, what="steady served again")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(admin: Admin, tmp_path: Path) -> None:
    """Last: it may disable or uninstall whatever it finds. Bounded to stay well under a minute."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    url = admin.host.admin_url + API
    t0 = time.monotonic()
    r = subprocess.run([st, "run", f"{url}/openapi.json", "--url", url, "-H", f"Authorization: Bearer {admin.token}",
                        "--checks", "not_a_server_error,response_schema_conformance", "--phases", "coverage,fuzzing",
                        "--max-examples", "8", "--seed", "11", "--max-time", "40", "--request-timeout", "60",
                        "--warnings", "off"], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout and time.monotonic() - t0 < 90


def test_a_busy_admin_port_stops_host_serve_with_one_line(tmp_path: Path) -> None:
    import socket

    from tests.integration.harness import free_port, run_host

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        r = run_host(tmp_path / "h", "serve", "--create", "--bind", f"127.0.0.1:{free_port()}", "--admin-bind", busy,
                     timeout=60)
    assert r.returncode == 1
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        f'error: admin listener (--admin-bind, HOST_ADMIN_BIND; "" = none): cannot listen on {busy}: '
        "Address already in use"]
