"""A setting naming a host path the plugin's sandbox does not show: `host install --set` and `host config` warn
with the grant that would show it (found with Fava, which only says "does not exist")."""

from __future__ import annotations

import tomllib
from pathlib import Path

from host.layout import Layout
from host.setting_paths import hidden_paths, named_paths
from manifests import parse_manifest

MANIFEST = """
name = "ledger"
version = "1.0"
entrypoint = "wsgi:app"

[settings.beancount_file]
[settings.database_uri]
[settings.repos]
[settings.token]
secret = true

[permissions.filesystem]
read = ["{granted}"]
"""


def warnings(tmp_path: Path, **values: str) -> list[str]:
    granted = tmp_path / "granted"
    manifest = parse_manifest(tomllib.loads(MANIFEST.format(granted=granted)))
    return hidden_paths(manifest, values, Layout(tmp_path / "home"))


def test_a_path_outside_the_sandbox_gets_the_grant_that_shows_it(tmp_path: Path) -> None:
    (tmp_path / "ledgers").mkdir()
    (tmp_path / "ledgers" / "main.beancount").write_text("")
    assert warnings(tmp_path, beancount_file=f"{tmp_path}/ledgers/main.beancount") == [
        f"setting beancount_file names {tmp_path}/ledgers/main.beancount, which ledger cannot see in its sandbox: "
        f'grant it in its plugin.toml ([permissions.filesystem] read = ["{tmp_path}/ledgers"], or write = [...] '
        "if it writes there) and install it again"]
    # a directory is granted itself; an SQLite URL and a list of paths are read as the app reads them
    (tmp_path / "repos" / "a").mkdir(parents=True)
    found = warnings(tmp_path, repos=f"{tmp_path}/granted/x {tmp_path}/repos/a",
                     database_uri=f"sqlite:///{tmp_path}/ledgers/new.db")
    assert [w.split(",")[0] for w in found] == [f"setting repos names {tmp_path}/repos/a",
                                                f"setting database_uri names {tmp_path}/ledgers/new.db"]
    assert f'read = ["{tmp_path}/repos/a"]' in found[0]


def test_paths_the_sandbox_shows_or_that_name_nothing_here_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "granted").mkdir()
    (tmp_path / "secret").mkdir()
    assert warnings(tmp_path, beancount_file=f"{tmp_path}/granted/main.beancount",  # granted (read)
                    database_uri=f"sqlite:///{tmp_path}/home/data/ledger/app.db",  # its own data dir
                    repos="/usr/share/zoneinfo /nowhere/at/all",  # the system's (shown), and nothing
                    token=f"{tmp_path}/secret/key") == []  # a secret value is never looked at, nor printed


def test_only_absolute_paths_are_read_from_values() -> None:
    assert named_paths("sqlite:///app.db") == []  # relative to the app's working directory (its data dir)
    assert named_paths("sqlite+pysqlite:////srv/a.db") == ["/srv/a.db"]
    assert named_paths("file:///srv/x") == ["/srv/x"]
    assert named_paths("https://example.org/srv/x") == []
    assert named_paths("postgresql://user@db/app") == []
    assert named_paths(42) == []


def test_host_config_warns_after_saving(tmp_path: Path) -> None:
    from host.configure import change
    from host.registry import Registry
    from host.settings import HostSettings

    (tmp_path / "ledgers").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    reg = Registry(home / "registry.db")
    reg.put("ledger", "1.0", "i1", tomllib.loads(MANIFEST.format(granted=tmp_path / "granted")), True, uid_index=1)
    said: list[str] = []
    change(HostSettings(home=home), reg, "ledger", (f"beancount_file={tmp_path}/ledgers/main.beancount",), None,
           (), said.append)
    assert said[0] == "ledger: saved beancount_file"
    assert said[1].startswith(f"warning: setting beancount_file names {tmp_path}/ledgers/main.beancount, which "
                              f"ledger cannot see in its sandbox: grant it in its plugin.toml")
    assert reg.plugin_settings("ledger") == {"beancount_file": f"{tmp_path}/ledgers/main.beancount"}
