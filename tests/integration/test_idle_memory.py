"""What an idle host keeps resident (issue 12): heavy modules it needs only to install or sign stay out of the
supervisor, and the web tier's workers share the app their arbiter built. Observed from outside, in /proc,
on the session's host and on one host of this module's whose plugin has started and gone to sleep. The figures
are bench/memory.py's, not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.settings import HostSettings
from host.supervisor.web import web_env
from tests.integration.harness import FIXTURES, ServedHost, descendants, served_plugins, short_home, wait_for

# What the web tiers build their apps without: httpx (~5 MiB resident per tier; the proxy speaks http.client
# and filters headers as sent) and cryptography (~6 MiB; only installs and `host sign` verify or sign).
# The public app also does without the manifest models and pydantic altogether (~10 MiB: its settings come
# validated from the supervisor, host.settings_view) and without the registry's sqlite3.
NOT_IN_WEB_TIERS = {"public": ("httpx", "httpcore", "cryptography", "manifests", "pydantic", "pydantic_core",
                               "pydantic_settings", "sqlite3"),
                    "admin": ("httpx", "httpcore", "cryptography")}
# As the supervisor starts a web tier (host.supervisor.web.web_env), and as its arbiter builds the app before it
# forks; then what a gevent worker does first after the fork: monkey-patch, which should import nothing more and
# not look up gevent's plugins again (the arbiter did, once); and its first page, which should compile no template.
BUILD_BOTH_APPS = """
import json, sys
from host.webtier import WebTier
from host.layout import Layout
from host.settings_view import received
settings = received()
loaded = {}
for app, heavy in json.loads(sys.argv[1]).items():  # public first: the admin app adds modules
    built = WebTier(settings, None, Layout(settings.home_dir), app).load()
    loaded[app] = sorted(m for m in heavy if m in sys.modules)
    if app == "public":
        before = set(sys.modules)
        from importlib import metadata
        scans = []
        metadata.entry_points = lambda *a, **k: scans.append(k) or metadata.EntryPoints(())
        from gevent import monkey
        monkey.patch_all()
        loaded["imported by patching"] = sorted(set(sys.modules) - before)
        loaded["package metadata scans by patching"] = len(scans)
        compiled = []
        compile_template = built.jinja_env.compile
        built.jinja_env.compile = lambda *a, **k: compiled.append(a) or compile_template(*a, **k)
        status = built.test_client().get("/").status_code
        loaded["templates compiled for the first page"] = (status, len(compiled))
print(json.dumps(loaded))
"""


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}


def test_the_idle_supervisor_has_not_loaded_cryptography(served: ServedHost) -> None:
    """cryptography (Ed25519, ~6 MiB resident) is for signing and verifying bundles: `host install`, `host
    sign`, an upload's install; the supervisor serving plugins never loads it."""
    assert served.proc is not None
    supervisor = served.proc.pid
    files = mapped_files(supervisor)
    assert any("/_sqlite3." in f for f in files)  # the look works: a compiled module it does load
    assert not [f for f in files if "/cryptography/" in f]


def test_no_web_process_loads_cryptography(served: ServedHost) -> None:
    web = served.status()["web"]["pid"]
    for pid in {web, *descendants(web)}:
        assert not [f for f in mapped_files(pid) if "/cryptography/" in f], pid


HEAP = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each arena but the main one is a heap this size, so aligned


def malloc_arenas(pid: int) -> int:
    """Arenas of a glibc process besides the main one, counted in /proc/PID/maps: anonymous mappings that
    start on a 64 MiB boundary and (with the reserved, inaccessible rest of the heap) span exactly 64 MiB."""
    regions = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end, fields[1], len(fields) > 5))
    count = 0
    for i, (start, end, perms, named) in enumerate(regions):
        if named or start % HEAP or not perms.startswith("rw"):
            continue
        rest = regions[i + 1] if i + 1 < len(regions) else None  # the heap's reserved part: ---p, right after
        if end - start == HEAP or (rest is not None and rest[0] == end and rest[2].startswith("---")
                                   and not rest[3] and rest[1] - start == HEAP):
            count += 1
    return count


def test_threaded_host_processes_keep_at_most_two_malloc_arenas(served: ServedHost) -> None:
    """The supervisor runs a thread per plugin and more; a gthread worker a pool. glibc would give each thread
    an arena of its own (up to 16 here), each keeping what it once held; host.arenas caps them at two."""
    assert served.proc is not None
    supervisor = served.proc.pid
    web = served.status()["web"]["pid"]
    assert len(list(Path(f"/proc/{supervisor}/task").iterdir())) > 4  # threaded enough to have asked for more
    for pid in {supervisor, web, *descendants(web)}:
        assert malloc_arenas(pid) <= 1, pid  # the main arena and at most one more


def test_no_public_web_process_loads_pydantic(served: ServedHost) -> None:
    """The public web tier (arbiter and workers) gets its settings validated by the supervisor and never loads
    pydantic (~10 MiB resident per tier); the look is the one that finds it in the supervisor, above."""
    web = served.status()["web"]["pid"]
    for pid in {web, *descendants(web)}:
        assert not [f for f in mapped_files(pid) if "/pydantic_core/" in f], pid


def test_the_web_tiers_build_their_apps_without_modules_they_do_not_need() -> None:
    with short_home() as home:
        (home / "run").mkdir(parents=True)
        env = {**os.environ, **web_env(HostSettings(home=home))}
        got = subprocess.run([sys.executable, "-c", BUILD_BOTH_APPS, json.dumps(NOT_IN_WEB_TIERS)], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr[-2000:]
        assert json.loads(got.stdout) == {"public": [], "imported by patching": [],
                                         "package metadata scans by patching": 0,
                                         "templates compiled for the first page": [200, 0], "admin": []}


# What the supervisor never imports while it serves (host.supervisor.serve): the CLI and settings validation
# (`host serve` did that before it became the supervisor), the manifest models (it reads stored manifests through
# manifests.view), what only installs, signing, upgrades and the admin's changes use, and the host API's HTTP
# server (http.server, with email and ssl), which the first plugin with host-API permissions brings in, and the
# archive readers (an upload's install).
NOT_IN_SUPERVISOR = ("click", "pydantic", "pydantic_core", "pydantic_settings", "manifests.model", "manifests.loader",
                     "host.settings", "host.cli", "host.installer", "host.operations", "host.signing", "cryptography",
                     "packaging", "configparser", "urllib.request", "http.server", "http.client", "email", "ssl",
                     "host.archive_formats", "tarfile", "zipfile", "argparse", "tomllib")
SUPERVISOR_IMPORTS = """
import json, sys
from host.supervisor.serve import main
from host.supervisor.core import Supervisor
print(json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


def test_the_supervisor_imports_neither_pydantic_nor_the_cli() -> None:
    got = subprocess.run([sys.executable, "-c", SUPERVISOR_IMPORTS, json.dumps(NOT_IN_SUPERVISOR)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr[-2000:]
    assert json.loads(got.stdout) == []


@pytest.fixture(scope="module")
def slept() -> Iterator[ServedHost]:
    """A host whose one plugin has served a request and then scaled to zero: its supervisor launched it."""
    with served_plugins(FIXTURES / "echo", env={"HOST_IDLE_TIMEOUT": "1"}) as host:
        assert host.get("/plugins/echo/status/204").status_code == 204  # answered by the plugin, woken for it
        wait_for(lambda: host.status()["plugins"]["echo"]["state"] == "stopped", 30, 0.1, what="echo asleep")
        yield host


def test_a_supervisor_that_launched_a_plugin_has_not_loaded_pydantic(slept: ServedHost) -> None:
    """`host serve` validated its settings and then became a fresh interpreter without them; plugins start from
    their stored manifests read through manifests.view. pydantic's compiled core (~15 MiB with the models) is
    never mapped into the serving supervisor."""
    assert slept.proc is not None
    files = mapped_files(slept.proc.pid)
    assert any("/_sqlite3." in f for f in files)
    assert not [f for f in files if "/pydantic_core/" in f or "/cryptography/" in f]
    assert not [f for f in files if "/_ssl." in f]  # echo has no host-API permission: no http.server, no ssl
    with open(f"/proc/{slept.proc.pid}/cmdline", "rb") as fh:
        argv = fh.read().split(b"\0")
    assert argv[argv.index(b"-m") + 1] == b"host.supervisor"  # the pid `host serve` started as, a new program
