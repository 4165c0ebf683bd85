"""Signed bundles (host.signing), publisher pinning and downgrades (host.trust), install integrity (host.integrity)."""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from host import integrity, signing, trust
from host.archive import extract
from host.bundle import copy_bundle
from host.errors import DowngradeRefused, IntegrityError, SignatureError, UsageError
from host.registry import Provenance, Registry
from host.risk import assess
from host.settings import HostSettings
from manifests import load_manifest

MANIFEST = 'name = "demo"\nversion = "{v}"\nentrypoint = "app:app"\n'


def plugin(root: Path, version: str = "1.0.0") -> Path:
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "plugin.toml").write_text(MANIFEST.format(v=version))
    (root / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    return root


def key(tmp_path: Path, name: str) -> signing.Ed25519PrivateKey:
    signing.generate(tmp_path / name)
    return signing.load_secret(tmp_path / name)


def installed(src: Path, dst: Path) -> Path:
    """What `host install` verifies: the copy."""
    copy_bundle(src, dst)
    return dst


@pytest.fixture
def k1(tmp_path: Path) -> signing.Ed25519PrivateKey:
    return key(tmp_path, "k1.key")


# -- keys and signatures ---------------------------------------------------------------------------------------


def test_keygen_writes_a_private_secret_key_and_a_public_key(tmp_path: Path) -> None:
    public = signing.generate(tmp_path / "author.key")
    assert (tmp_path / "author.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "author.key.pub").read_text().strip() == public
    assert public.startswith("ed25519:") and len(signing.key_id(public)) == 16
    with pytest.raises(UsageError, match="exists"):
        signing.generate(tmp_path / "author.key")  # never over an existing key


def test_a_signed_bundle_verifies_and_names_its_key(tmp_path: Path, k1: signing.Ed25519PrivateKey) -> None:
    src = plugin(tmp_path / "src")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"debris")  # not copied, so not listed
    sig = signing.sign_dir(src, k1)
    assert sorted(sig.files) == ["app.py", "pkg/mod.py", "plugin.toml"]
    got = signing.verify(installed(src, tmp_path / "b"), "demo", "1.0.0")
    assert got is not None and got.key == sig.key


def test_unsigned_bundle_verifies_as_none(tmp_path: Path) -> None:
    assert signing.verify(installed(plugin(tmp_path / "src"), tmp_path / "b"), "demo", "1.0.0") is None


@pytest.mark.parametrize(("attack", "message"), [
    (lambda b: (b / "pkg" / "mod.py").write_text("X = 2  # evil\n"),
     "demo: signature: pkg/mod.py: sha256 differs from the signature (changed after signing)"),
    (lambda b: (b / "pkg" / "evil.py").write_text("import os\n"),
     "demo: signature: pkg/evil.py: not listed in the signature (added after signing)"),
    (lambda b: (b / "app.py").unlink(),
     "demo: signature: app.py: listed in the signature but missing from the bundle"),
])
def test_cant_change_a_file_after_signing(tmp_path: Path, k1: signing.Ed25519PrivateKey, attack: object,
                                          message: str) -> None:
    src = plugin(tmp_path / "src")
    signing.sign_dir(src, k1)
    bundle = installed(src, tmp_path / "b")
    attack(bundle)  # type: ignore[operator]
    with pytest.raises(SignatureError) as err:
        signing.verify(bundle, "demo", "1.0.0")
    assert str(err.value) == message


def test_cant_rewrite_the_file_list_to_match_a_change(tmp_path: Path, k1: signing.Ed25519PrivateKey) -> None:
    src = plugin(tmp_path / "src")
    signing.sign_dir(src, k1)
    (src / "pkg" / "mod.py").write_text("X = 2  # evil\n")
    data = json.loads((src / "plugin.sig").read_text())
    data["files"]["pkg/mod.py"] = signing.sha256_file(src / "pkg" / "mod.py")
    import hashlib
    data["files_sha256"] = hashlib.sha256(signing._canonical(data["files"])).hexdigest()
    (src / "plugin.sig").write_text(json.dumps(data))
    with pytest.raises(SignatureError, match="the signature does not verify with its key"):
        signing.verify(installed(src, tmp_path / "b"), "demo", "1.0.0")


def test_cant_reuse_a_signature_for_another_version(tmp_path: Path, k1: signing.Ed25519PrivateKey) -> None:
    src = plugin(tmp_path / "src")
    signing.sign_dir(src, k1)
    (src / "plugin.toml").write_text(MANIFEST.format(v="2.0.0"))
    with pytest.raises(SignatureError, match=r"signed for demo 1\.0\.0, but the manifest says demo 2\.0\.0"):
        signing.verify(installed(src, tmp_path / "b"), "demo", "2.0.0")


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "tar"])
def test_host_sign_signs_an_archive_in_place(tmp_path: Path, fmt: str) -> None:
    src = plugin(tmp_path / "src")
    arc = tmp_path / f"demo.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(arc, "w") as z:
            for p in sorted(src.rglob("*")):
                if p.is_file():
                    z.write(p, f"demo/{p.relative_to(src)}")
    else:
        with tarfile.open(arc, "w:gz" if fmt == "tar.gz" else "w") as t:
            t.add(src, "demo")
    from host.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["keygen", str(tmp_path / "a.key")]).exit_code == 0
    res = runner.invoke(cli, ["sign", str(arc), "--key", str(tmp_path / "a.key")])
    assert res.exit_code == 0, res.output
    assert "signed demo 1.0.0: 3 files" in res.output
    root = extract(arc, tmp_path / "x")
    assert (root / "plugin.sig").is_file()
    assert signing.verify(installed(root, tmp_path / "b"), "demo", "1.0.0") is not None


# -- trust: policy, pinning, succession, downgrades -------------------------------------------------------------


def settings(tmp_path: Path, **kw: str) -> HostSettings:
    return HostSettings(home=tmp_path / "home", **kw)  # type: ignore[arg-type]


def verified(tmp_path: Path, k: signing.Ed25519PrivateKey, version: str = "1.0.0",
             previous: signing.Ed25519PrivateKey | None = None) -> signing.Verified | None:
    src = plugin(tmp_path / f"src-{version}-{os.urandom(2).hex()}", version)
    signing.sign_dir(src, k, previous)
    return signing.verify(installed(src, src.with_name(src.name + "-b")), "demo", version)


def decide(s: HostSettings, reg: Registry, v: signing.Verified | None,
           overrides: trust.Overrides = trust.Overrides()) -> trust.Decision:  # noqa: B008
    d = trust.Decision()
    trust.check_publisher(s, reg, "demo", v, overrides, d)
    return d


def commit(reg: Registry, version: str, d: trust.Decision, signer: str | None) -> None:
    reg.put("demo", version, f"{version}-x", {}, True, provenance=Provenance("0" * 64, signer), pin=d.pin)


def test_an_unsigned_bundle_is_refused_under_require_and_warned_about_under_warn(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    with pytest.raises(SignatureError) as err:
        decide(settings(tmp_path, signatures="require"), reg, None)
    assert str(err.value) == ("demo: signature: the bundle is unsigned and this host requires signatures "
                              "(HOST_SIGNATURES=require); ask its author to sign it (`host sign`)")
    d = decide(settings(tmp_path), reg, None)
    assert d.pin is None and "unsigned" in d.notes[0]


@pytest.fixture
def pinned(tmp_path: Path, k1: signing.Ed25519PrivateKey) -> tuple[Registry, HostSettings, signing.Verified]:
    """demo 1.0.0 installed, signed by k1, which it pinned."""
    reg = Registry(tmp_path / "r.db")
    s = settings(tmp_path)
    v1 = verified(tmp_path, k1)
    assert v1 is not None
    d = decide(s, reg, v1)
    assert d.pin == v1.key
    commit(reg, "1.0.0", d, v1.key)
    return reg, s, v1


def test_first_signed_install_pins_its_key_and_another_key_is_refused(
        tmp_path: Path, pinned: tuple[Registry, HostSettings, signing.Verified]) -> None:
    reg, s, v1 = pinned
    reg.remove("demo")  # the pin survives an uninstall
    k2 = key(tmp_path, "k2.key")
    v2 = verified(tmp_path, k2, "1.1.0")
    assert v2 is not None
    with pytest.raises(SignatureError) as err:
        decide(s, reg, v2)
    assert str(err.value).startswith(f"demo: signature: signed by key {v2.key_id}, but demo's publisher is key "
                                     f"{v1.key_id}; refused")
    with pytest.raises(SignatureError, match="the bundle is unsigned, but demo is published by key"):
        decide(s, reg, None)  # stripping the signature is no way around the pin


def test_a_succession_statement_from_the_pinned_key_hands_the_plugin_over(
        tmp_path: Path, k1: signing.Ed25519PrivateKey, pinned: tuple[Registry, HostSettings, signing.Verified]) -> None:
    reg, s, v1 = pinned
    k2 = key(tmp_path, "k2.key")
    v2 = verified(tmp_path, k2, "1.1.0", previous=k1)
    assert v2 is not None
    d = decide(s, reg, v2)
    assert d.pin == v2.key and d.audit == [("publisher_succeeded", {"from": v1.key_id, "to": v2.key_id})]
    # a stranger's key cannot hand over what it never published
    k3, k4 = key(tmp_path, "k3.key"), key(tmp_path, "k4.key")
    v4 = verified(tmp_path, k4, "1.2.0", previous=k3)
    with pytest.raises(SignatureError, match="but demo's publisher is key"):
        decide(s, reg, v4)


def test_an_admin_override_pins_the_new_key_and_is_audited(
        tmp_path: Path, pinned: tuple[Registry, HostSettings, signing.Verified]) -> None:
    reg, s, _ = pinned
    v2 = verified(tmp_path, key(tmp_path, "k2.key"), "1.1.0")
    assert v2 is not None
    d = decide(s, reg, v2, trust.Overrides(trust_new_key=True))
    assert d.pin == v2.key and d.audit[0][0] == "publisher_overridden"


def test_a_pretrusted_key_is_the_only_one_accepted_before_any_install(tmp_path: Path,
                                                                      k1: signing.Ed25519PrivateKey) -> None:
    reg = Registry(tmp_path / "r.db")
    public = signing.public_text(k1.public_key())
    s = settings(tmp_path, trusted_keys=f"demo={public}")
    assert decide(s, reg, verified(tmp_path, k1)).pin == public
    with pytest.raises(SignatureError, match="but demo's publisher is key"):
        decide(s, reg, verified(tmp_path, key(tmp_path, "k2.key")))
    with pytest.raises(UsageError, match="HOST_TRUSTED_KEYS: demo: not a public key"):
        decide(settings(tmp_path, trusted_keys="demo=ed25519:nope"), reg, None)


def test_a_downgrade_below_the_high_water_mark_is_refused_even_after_uninstall(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    commit(reg, "2.0.0", trust.Decision(), None)
    commit(reg, "1.5.0", trust.Decision(), None)  # (as --allow-downgrade would) the mark stays at 2.0.0
    reg.remove("demo")
    assert reg.high_water("demo") == "2.0.0"
    with pytest.raises(DowngradeRefused) as err:
        trust.check_version(reg, "demo", "1.9.9", trust.Overrides())
    assert str(err.value) == ("demo: 1.9.9 is older than 2.0.0, the highest version installed here before; refusing "
                              "a downgrade (pass --allow-downgrade to install it anyway; it is audited)")
    d = trust.check_version(reg, "demo", "1.9.9", trust.Overrides(allow_downgrade=True))
    assert d.audit == [("downgrade_allowed", {"from": "2.0.0", "to": "1.9.9"})]
    assert trust.check_version(reg, "demo", "2.0.0", trust.Overrides()).audit == []  # a reinstall is no downgrade


def test_an_unsigned_install_costs_a_risk_point(tmp_path: Path) -> None:
    m = load_manifest(plugin(tmp_path / "src"))
    assert assess(m, unsigned=True).score == assess(m).score + 1
    assert any("unsigned" in r for r in assess(m, unsigned=True).reasons)


# -- integrity of an install ---------------------------------------------------------------------------------


@pytest.fixture
def install(tmp_path: Path) -> Path:
    inst = tmp_path / "inst"
    installed(plugin(tmp_path / "src"), inst / "bundle")
    site = inst / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "flask").mkdir(parents=True)
    (site / "flask" / "__init__.py").write_text("VERSION = 3\n")
    (inst / "venv" / "bin").mkdir()
    os.symlink("/usr/bin/python3", inst / "venv" / "bin" / "python")
    return inst


def test_an_unchanged_install_passes_without_hashing_anything(install: Path) -> None:
    digest = integrity.record(install)
    assert integrity.check("demo", install, digest) == 0
    assert integrity.check("demo", install, digest, full=True) == 4  # 3 bundle files + 1 in site-packages


@pytest.mark.parametrize(("attack", "named", "why"), [
    (lambda i: (i / "venv/lib/python3.11/site-packages/flask/__init__.py").write_text("VERSION = 4\n"),
     "venv/lib/python3.11/site-packages/flask/__init__.py", "modified since install (sha256 differs)"),
    (lambda i: (i / "venv/lib/python3.11/site-packages/evil.pth").write_text("import os\n"),
     "venv/lib/python3.11/site-packages/evil.pth", "added since install"),
    (lambda i: (i / "bundle/pkg/mod.py").unlink(), "bundle/pkg/mod.py", "missing (deleted since install)"),
    (lambda i: ((i / "venv/bin/python").unlink(), os.symlink("/bin/sh", i / "venv/bin/python")),
     "venv/bin/python", "a symlink changed since install"),
])
def test_cant_start_a_modified_install(install: Path, attack: object, named: str, why: str) -> None:
    digest = integrity.record(install)
    attack(install)  # type: ignore[operator]
    with pytest.raises(IntegrityError) as err:
        integrity.check("demo", install, digest)
    assert str(err.value) == (f"demo: integrity: {named}: {why}; refusing to start it (reinstall it: "
                              "`host install --force`)")


def test_cant_hide_a_same_size_change_by_restoring_the_mtime(install: Path) -> None:
    digest = integrity.record(install)
    target = install / "bundle" / "pkg" / "mod.py"
    st = target.stat()
    target.write_text("X = 9\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves: the fast path hashes it
    with pytest.raises(IntegrityError, match=r"bundle/pkg/mod\.py: modified since install"):
        integrity.check("demo", install, digest)


def test_cant_rewrite_the_record_to_match_a_change(install: Path) -> None:
    digest = integrity.record(install)
    (install / "bundle" / "app.py").write_text("evil = 1\n")
    integrity.record(install)  # the attacker re-records; the registry still holds the old digest
    with pytest.raises(IntegrityError, match="differs from the hash the registry keeps"):
        integrity.check("demo", install, digest)


def test_a_touched_but_identical_file_still_passes(install: Path) -> None:
    digest = integrity.record(install)
    os.utime(install / "bundle" / "app.py", ns=(1, 1))
    assert integrity.check("demo", install, digest) == 1
