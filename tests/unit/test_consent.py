"""host.consent: what a manifest asks beyond the operator's grant, one readable line per permission."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from host.consent import excess, load_grant
from host.errors import UsageError
from manifests import Manifest


def manifest(**permissions: Any) -> Manifest:
    return Manifest.model_validate({"name": "demo", "version": "1.0", "entrypoint": "app:app",
                                    "permissions": permissions})


def test_defaults_are_covered_by_an_empty_grant() -> None:
    assert excess(manifest(), {}) == []


def test_a_grant_covering_everything_asked_is_empty() -> None:
    asked = {"network": {"outbound": ["api.example.com:443", "db.example.org:5432"]},
             "filesystem": {"read": ["/srv/shared/docs"], "write": ["/srv/x"]},
             "environment": ["API_KEY"], "resources": {"memory_mb": 512, "cpu_seconds": 60},
             "host_api": ["kv:read"]}
    grant = {"network": {"outbound": ["api.example.com:443", "*.example.org:5432"]},
             "filesystem": {"write": ["/srv"]}, "environment": ["API_KEY", "OTHER"],
             "resources": {"memory_mb": 1024, "cpu_seconds": 120}, "host_api": ["kv:read", "kv:write"]}
    assert excess(manifest(**asked), grant) == []
    assert excess(manifest(**asked), {"permissions": grant}) == []  # a whole [permissions] table works too


def test_one_line_per_permission_beyond_the_grant() -> None:
    asked = manifest(network={"outbound": ["api.example.com:443", "127.0.0.1:5432"]},
                     filesystem={"read": ["/etc/ssl"], "write": ["/srv/x"]}, environment=["API_KEY"],
                     resources={"memory_mb": 512, "cpu_seconds": None, "workers": 2},
                     requests={"timeout_seconds": 120.0, "max_body_mb": 64}, host_api=["kv:write"])
    grant = {"network": {"outbound": ["other.example.com:443"]}, "filesystem": {"read": ["/srv/x"]},
             "resources": {"memory_mb": 256, "cpu_seconds": 60}}
    assert excess(asked, grant) == [
        "network.outbound: api.example.com:443 not granted",
        "network.outbound: 127.0.0.1:5432 not granted",
        "filesystem.read: /etc/ssl not granted",
        "filesystem.write: /srv/x not granted",  # read access to it is not write access
        "environment: API_KEY not granted",
        "resources.memory_mb: 512 > granted 256",
        "resources.cpu_seconds: unlimited > granted 60",
        "resources.workers: 2 > granted 1",
        "requests.timeout_seconds: 120 > granted 30",
        "requests.max_body_mb: 64 > granted 16",
        "host_api: kv:write not granted",
    ]


def test_public_internet_grant_covers_names_but_not_private_addresses_or_other_ports() -> None:
    asked = manifest(network={"outbound": ["api.example.com:443", "203.0.113.7:443", "8.8.8.8:443",
                                           "10.0.0.5:443", "api.example.com:8080"]})
    assert excess(asked, {"network": {"outbound": True, "ports": [443]}}) == [
        "network.outbound: 203.0.113.7:443 not granted",  # documentation range: not a public address
        "network.outbound: 10.0.0.5:443 not granted",
        "network.outbound: api.example.com:8080 not granted",
    ]


def test_asking_for_the_public_internet() -> None:
    anywhere = manifest(network={"outbound": True})
    assert excess(anywhere, {"network": {"outbound": ["api.example.com:443"]}}) == [
        "network.outbound: the public internet (any host) not granted"]
    assert excess(anywhere, {"network": {"outbound": True, "ports": [443]}}) == [
        "network.ports: any port > granted 443"]
    some = manifest(network={"outbound": True, "ports": [443, 8443]})
    assert excess(some, {"network": {"outbound": True, "ports": [443]}}) == ["network.ports: 8443 not granted"]
    assert excess(some, {"network": {"outbound": True}}) == []


def test_wildcards_cover_subdomains_only() -> None:
    grant = {"network": {"outbound": ["*.example.org:443"]}}
    assert excess(manifest(network={"outbound": ["a.b.example.org:443", "*.c.example.org:443"]}), grant) == []
    assert excess(manifest(network={"outbound": ["example.org:443"]}), grant) == [
        "network.outbound: example.org:443 not granted"]


def test_an_invalid_grant_is_bad_input_naming_the_field() -> None:
    with pytest.raises(UsageError, match=r"^grant: resources.memory_mb: Input should be a valid integer"):
        excess(manifest(), {"resources": {"memory_mb": "lots"}})
    with pytest.raises(UsageError, match=r"^grant: netwrk: Extra inputs are not permitted"):
        excess(manifest(), {"netwrk": {}})


def test_load_grant_json_toml_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "g.json").write_text('{"resources": {"memory_mb": 512}}')
    (tmp_path / "g.toml").write_text("[resources]\nmemory_mb = 512\n")
    assert load_grant(str(tmp_path / "g.json")) == load_grant(str(tmp_path / "g.toml")) == {
        "resources": {"memory_mb": 512}}
    monkeypatch.setattr("sys.stdin", io.StringIO("[network]\noutbound = true\n"))
    assert load_grant("-") == {"network": {"outbound": True}}
    (tmp_path / "bad.json").write_text("{resources")
    with pytest.raises(UsageError, match=r"^--grant .*bad.json: not valid JSON"):
        load_grant(str(tmp_path / "bad.json"))
    with pytest.raises(UsageError, match=r"^--grant .*missing.json: cannot read it"):
        load_grant(str(tmp_path / "missing.json"))
