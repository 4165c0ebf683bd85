"""Egress decisions (pure): what a grant allows, and which address a name may be connected to."""

from __future__ import annotations

import ipaddress

import pytest

from host.egress.indexes import index_urls
from host.egress.point import fixed_binds, hosts_file
from host.egress.rules import Address, Grant, decide, index_destinations, local_addresses
from host.egress.server import resolve
from manifests import parse_destination
from manifests.model import Network


def dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(name: str, port: int) -> list[Address]:
        if name not in table:
            raise OSError(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[name]]
    return resolve


PUBLIC = dns({"api.example.com": ["93.184.216.34"], "a.b.example.org": ["93.184.216.35"],
              "rebind.example.com": ["127.0.0.1"], "mixed.example.com": ["10.0.0.5", "93.184.216.36"],
              "meta.example.com": ["169.254.169.254"], "localhost": ["127.0.0.1", "::1"]})


def grant(*dests: str, any_public: bool = False, ports: tuple[int, ...] = ()) -> Grant:
    return Grant(any_public=any_public, ports=ports, destinations=tuple(parse_destination(d) for d in dests))


def test_listed_name_and_port_allowed_to_its_public_address() -> None:
    d = decide(grant("api.example.com:443"), "API.example.com.", 443, PUBLIC)
    assert d.allowed and str(d.address) == "93.184.216.34"


def test_listed_name_other_port_refused() -> None:
    assert decide(grant("api.example.com:443"), "api.example.com", 80, PUBLIC).reason == "destination not granted"


def test_wildcard_matches_subdomains_only() -> None:
    g = grant("*.example.org:443")
    assert decide(g, "a.b.example.org", 443, PUBLIC).allowed
    assert not decide(g, "example.org", 443, PUBLIC).allowed
    assert not decide(g, "badexample.org", 443, PUBLIC).allowed


def test_rebinding_name_refused_even_when_listed() -> None:
    d = decide(grant("rebind.example.com:80"), "rebind.example.com", 80, PUBLIC)
    assert not d.allowed and d.reason == "rebind.example.com resolves to a loopback address (127.0.0.1)"


def test_mixed_answer_connects_only_to_the_public_address() -> None:
    d = decide(grant(any_public=True), "mixed.example.com", 80, PUBLIC)
    assert d.allowed and [str(a) for a in d.candidates] == ["93.184.216.36"]


@pytest.mark.parametrize(("host", "why"), [
    ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local (cloud metadata)"), ("10.1.1.1", "private"),
    ("192.168.1.1", "private"), ("::1", "loopback"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::ffff:127.0.0.1", "loopback"), ("100.64.0.1", "reserved"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:a9fe:a9fe::", "link-local (cloud metadata)"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"), ("0x7f.1", "loopback"), ("2130706433", "loopback"),
])
def test_outbound_true_refuses_non_public_addresses(host: str, why: str) -> None:
    """Also IPv4 behind IPv6 (NAT64, 6to4, Teredo) and the spellings inet_aton accepts (resolved to 127.0.0.1)."""
    d = decide(grant(any_public=True), host, 80, resolve)
    assert not d.allowed
    assert d.reason in (f"{why} address, not listed in the plugin's grant", f"{host} resolves to a {why} address "
                                                                              "(127.0.0.1)"), d.reason


def test_outbound_true_refuses_this_hosts_own_public_address() -> None:
    own = frozenset({ipaddress.ip_address("93.184.216.34")})
    d = decide(grant(any_public=True), "api.example.com", 443, PUBLIC, own)
    assert not d.allowed and "this host" in d.reason


def test_explicit_loopback_literal_is_granted_exactly() -> None:
    g = grant("127.0.0.1:5432")
    assert decide(g, "127.0.0.1", 5432, PUBLIC).allowed
    assert not decide(g, "127.0.0.1", 5433, PUBLIC).allowed
    assert not decide(g, "localhost", 5432, PUBLIC).allowed  # the literal, not a name that resolves to it


def test_outbound_true_with_ports_limits_ports() -> None:
    g = grant(any_public=True, ports=(443,))
    assert decide(g, "api.example.com", 443, PUBLIC).allowed
    assert decide(g, "api.example.com", 22, PUBLIC).reason == "destination not granted"


def test_unresolvable_name_refused_with_reason() -> None:
    d = decide(grant(any_public=True), "nowhere.invalid", 80, PUBLIC)
    assert not d.allowed and d.reason.startswith("cannot resolve nowhere.invalid")


def test_trusted_index_names_are_allowed_whatever_they_resolve_to() -> None:
    g = Grant(trusted=index_destinations(["https://pypi.org/simple", "http://127.0.0.1:3141/root/pypi"]))
    assert decide(g, "pypi.org", 443, dns({"pypi.org": ["203.0.113.80"]})).allowed
    assert decide(g, "127.0.0.1", 3141, PUBLIC).allowed
    assert not decide(g, "127.0.0.1", 8000, PUBLIC).allowed
    assert not decide(g, "api.example.com", 443, PUBLIC).allowed


def test_grant_round_trips_through_json() -> None:
    g = grant("api.example.com:443", "*.x.example.org:8443", "[::1]:80", any_public=True, ports=(443,))
    assert Grant.from_json(g.to_json()) == g


def test_grant_from_manifest_network() -> None:
    assert Grant.from_network(Network(outbound=True, ports=(443,))) == Grant(any_public=True, ports=(443,))
    g = Grant.from_network(Network(outbound=("127.0.0.1:5432", "api.example.com:443")))
    assert not g.any_public and [str(d) for d in g.destinations] == ["127.0.0.1:5432", "api.example.com:443"]


def test_loopback_literals_and_names_get_a_transparent_listener() -> None:
    g = grant("127.0.0.1:5432", "127.0.0.2:6379", "api.example.com:443", "203.0.113.7:5432", "127.0.0.1:3128",
              "*.example.org:443", "api.example.com:80", "db.example.com:5432")
    assert [(f.bind, f.port, f.dest) for f in fixed_binds(g)] == [
        ("127.0.0.1", 5432, "127.0.0.1"), ("127.0.0.2", 6379, "127.0.0.2"), ("127.77.0.1", 443, "api.example.com"),
        ("127.77.0.1", 80, "api.example.com"), ("127.77.0.2", 5432, "db.example.com")]
    assert hosts_file(g).splitlines()[2:] == ["127.77.0.1 api.example.com", "127.77.0.2 db.example.com"]


def test_index_urls_default_to_pypi_and_follow_operator_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert index_urls("", {}, []) == ["https://pypi.org/simple", "https://files.pythonhosted.org/"]
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\nextra-index-url = file:///opt/x\n")
    urls = index_urls("--extra-index-url=https://extra.example/simple -fhttps://f2.example/",
                      {"PIP_FIND_LINKS": "https://f.example/"}, [str(conf)])
    assert set(urls) == {"https://extra.example/simple", "https://f.example/", "https://f2.example/",
                         "https://mirror.example/simple", "file:///opt/x"}
    assert {str(d) for d in index_destinations(urls)} == {"extra.example:443", "f.example:443", "f2.example:443",
                                                          "mirror.example:443"}
    assert index_urls("--no-index --find-links /wheels", {}, []) == ["/wheels"]


def test_local_addresses_from_proc() -> None:
    fib = ["Main:", "  +-- 0.0.0.0/0 3 0 5", "     |-- 10.0.2.15", "        /32 host LOCAL",
           "     |-- 10.0.2.255", "        /32 link BROADCAST"]
    v6 = ["fe800000000000000000000000000001 02 40 20 80 eth0"]
    assert {str(a) for a in local_addresses(fib, v6)} == {"10.0.2.15", "fe80::1"}


@pytest.mark.parametrize("bad", ["example.com", "example.com:0", "exa mple.com:80", "*.com:443", "-x.com:1",
                                 "[not-v6]:80", "ex\u00e4mple.com:80", "1.2.3:80"])
def test_bad_destinations_are_refused_at_the_manifest(bad: str) -> None:
    with pytest.raises(ValueError, match=r"destination|host name|port|wildcard|IPv6"):
        parse_destination(bad)
