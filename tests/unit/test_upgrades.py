"""Upgrades with consent (host.upgrades, host.consent.upgrade_diff): the permission difference, and a widening
that `--yes` alone does not grant. No process runs: the refusal comes before anything is built."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from host import cli
from host.consent import upgrade_diff
from host.registry import Registry
from manifests import Permissions, load_manifest

OLD = '[permissions.network]\noutbound = ["api.example.com:443"]\n[permissions.resources]\nmemory_mb = 256\n'
NEW = ('[permissions.network]\noutbound = ["api.example.com:443", "db.example.net:5432"]\n'
       '[permissions.resources]\nmemory_mb = 1024\n')


def test_the_diff_names_what_widened_and_what_narrowed() -> None:
    old = Permissions.model_validate({"network": {"outbound": ["api.example.com:443", "old.example.com:443"]},
                                      "resources": {"memory_mb": 256, "processes": 64}})
    new = Permissions.model_validate({"network": {"outbound": ["api.example.com:443", "db.example.net:5432"]},
                                      "resources": {"memory_mb": 1024, "processes": 32}})
    widened, narrowed = upgrade_diff(old, new)
    assert widened == ["network.outbound: + db.example.net:5432", "resources.memory_mb: 256 → 1024"]
    assert narrowed == ["network.outbound: − old.example.com:443", "resources.processes: 64 → 32"]
    assert upgrade_diff(new, new) == ([], [])


def source(root: Path, version: str, permissions: str) -> Path:
    root.mkdir()
    (root / "plugin.toml").write_text(f'name = "demo"\nversion = "{version}"\nentrypoint = "app:app"\n{permissions}')
    (root / "app.py").write_text("app = None\n")
    return root


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """demo 1.0.0 installed (as far as the registry knows), granted what OLD asks."""
    monkeypatch.setenv("HOST_UID_FILE", str(tmp_path / "uids.json"))  # never the machine-wide one
    home = tmp_path / "home"
    home.mkdir()
    m = load_manifest(source(tmp_path / "v1", "1.0.0", OLD))
    Registry(home / "registry.db").put("demo", "1.0.0", "1.0.0-aaaaaa", m.model_dump(mode="json"), True)
    return home


def install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path, src: Path,
            *flags: str) -> tuple[int, str]:
    """`host install` as a user runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["host", "--home", str(home), "install", str(src), *flags])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0), capsys.readouterr().err


def test_yes_alone_does_not_grant_an_upgrade_that_adds_an_egress_destination(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = install(monkeypatch, capsys, home, source(tmp_path / "v2", "1.1.0", NEW), "--yes")
    assert code == 2
    assert "    permissions changed since 1.0.0:\n    " in err
    assert "  widened:  network.outbound: + db.example.net:5432" in err
    assert err.strip().splitlines()[-1] == (
        "error: demo: upgrading 1.0.0 → 1.1.0 widens its permissions (network.outbound: + db.example.net:5432; "
        "resources.memory_mb: 256 → 1024); --yes does not grant a widening: pass --grant-widened (or --grant FILE); "
        "1.0.0 stays installed and serving")
    rec = Registry(home / "registry.db").require("demo")
    assert (rec.version, rec.install_id) == ("1.0.0", "1.0.0-aaaaaa")
    assert not (home / "plugins" / "demo").exists() or list((home / "plugins" / "demo").iterdir()) == []


@pytest.fixture
def stop_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consent passed: the build would start now; the test stops there."""
    from host import installer

    def built(*_: object, **__: object) -> None:
        raise installer.InstallError("demo", "building", "stopped here by the test")

    monkeypatch.setattr(installer.Installer, "_build", built)


@pytest.mark.usefixtures("stop_at_build")
def test_an_explicit_grant_that_covers_the_widening_is_consent(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    grant = tmp_path / "grant.json"
    grant.write_text('{"network": {"outbound": ["api.example.com:443", "db.example.net:5432"]}, '
                     '"resources": {"memory_mb": 1024}}')
    for flags in (("--grant-widened",), ("--grant", str(grant))):
        code, err = install(monkeypatch, capsys, home, source(tmp_path / f"v2{len(flags)}", "1.1.0", NEW), *flags)
        assert code == 1 and err.strip().splitlines()[-1].endswith("stopped here by the test"), err


@pytest.mark.usefixtures("stop_at_build")
def test_a_narrowing_upgrade_needs_no_new_consent(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = install(monkeypatch, capsys, home, source(tmp_path / "v2", "1.1.0", ""), "--yes")
    assert code == 1 and "stopped here by the test" in err
    assert "  narrowed: network.outbound: − api.example.com:443" in err


def test_rollback_without_a_kept_install_says_so_and_changes_nothing(
        home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    events = len(Registry(home / "registry.db").events("demo"))
    monkeypatch.setattr(sys, "argv", ["host", "--home", str(home), "rollback", "demo", "--to", "0.9"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: demo: no earlier install 0.9 is kept to roll back to (see "
                                               "HOST_KEEP_INSTALLS)")
    reg = Registry(home / "registry.db")
    assert reg.require("demo").enabled and len(reg.events("demo")) == events
