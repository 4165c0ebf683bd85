"""The runner's own reading of a policy file and of its report: the same policy the dataclass reads, the same
refusals, and JSON that json itself reads back, without importing dataclasses or json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sandbox_runner import jsontext, policy_file
from sandbox_runner.layers import seccomp
from sandbox_runner.policy import Network, Policy, Resources

RICH = Policy(
    name="rich",
    ro_paths=("/srv/a", "/srv/b"),
    rw_paths=("/srv/data",),
    env={"HOME": "/srv/data", "LANG": "C.UTF-8"},
    cwd="/srv/data",
    uid=700001,
    gid=700001,
    network=Network(enabled=True, connect_ports=(443, 80), netns_fd=7, hosts_file="/srv/hosts"),
    resources=Resources(memory_bytes=1 << 20, cpu_seconds=5, cpu_percent=50, processes=8),
    backend="bwrap",
    cgroup_name="plugins/rich",
    required=("seccomp", "landlock"),
    report_path="/srv/report.json",
    listen_fd=3,
    etc_files=(("/etc/passwd", "/srv/passwd"),),
    resident=False,
    seccomp_filter=("0600000000000000", "1 deny rules"),
)


def test_defaults_are_the_dataclass_defaults() -> None:
    assert policy_file.complete({"name": "x"}) == json.loads(Policy(name="x").to_json())


@pytest.mark.parametrize("policy", [Policy(name="plain"), RICH])
def test_the_view_reads_every_field_as_the_dataclass_does(policy: Policy) -> None:
    view = policy_file.load(policy.to_json())
    for f in dataclasses.fields(Policy):
        if f.name in ("network", "resources"):
            nested = getattr(policy, f.name)
            for g in dataclasses.fields(nested):
                assert getattr(getattr(view, f.name), g.name) == getattr(nested, g.name), (f.name, g.name)
        else:
            assert getattr(view, f.name) == getattr(policy, f.name), f.name


@pytest.mark.parametrize(("raw", "error"), [
    ({"name": "x", "rezident": False}, "Policy: unknown field 'rezident'"),
    ({"name": "x", "network": {"enabeld": True}}, "Network: unknown field 'enabeld'"),
    ({"name": "x", "resources": {"memory": 1}}, "Resources: unknown field 'memory'"),
    ({"cwd": "/"}, "Policy: missing field 'name'"),
    ({"name": "x", "network": []}, "Network: expected a JSON object, got list"),
    ([], "Policy: expected a JSON object, got list"),
])
def test_unknown_or_missing_fields_are_refused(raw: object, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        policy_file.load(json.dumps(raw))
    with pytest.raises((TypeError, AttributeError)):  # the dataclass refuses them too
        Policy.from_json(json.dumps(raw))


@pytest.mark.parametrize("etc", [[["/etc/shadow", "/srv/x"]], [["/etc/passwd", "rel"]],
                                 [["/etc/hosts", "/a"], ["/etc/hosts", "/b"]]])
def test_etc_files_are_refused_as_the_dataclass_refuses_them(etc: list[list[str]]) -> None:
    text = json.dumps({"name": "x", "etc_files": etc})
    with pytest.raises(ValueError, match="etc_files") as ours:
        policy_file.load(text)
    with pytest.raises(ValueError, match="etc_files") as theirs:
        Policy.from_json(text)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("given", [["zz", "d"], ["", "d"], ["06000000", 1], ["06"]])
def test_a_malformed_seccomp_filter_is_refused(given: list[object]) -> None:
    with pytest.raises(ValueError, match="seccomp_filter: expected"):
        policy_file.load(json.dumps({"name": "x", "seccomp_filter": given}))


@pytest.mark.parametrize("text", ["", "{", '{"name": "x"} x', '{"name": "x",}', "nul", '"\x01"'])
def test_what_json_refuses_the_policy_reader_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        policy_file.parse_json(text)


def test_the_policy_reader_refuses_nan_and_infinity_which_are_not_json() -> None:
    for text in ('{"a": NaN}', '{"a": -Infinity}'):
        with pytest.raises(ValueError, match="is not a JSON value"):
            policy_file.parse_json(text)


def test_the_policy_reader_parses_what_json_parses() -> None:
    text = ' \n{"a": [1, -2.5e3, true, false, null], "\\u00e9\\ud83d\\ude00": {"b": "\\"q\\" \\\\ \\n"}}\n'
    assert policy_file.parse_json(text) == json.loads(text)
    assert policy_file.parse_json(RICH.to_json()) == json.loads(RICH.to_json())


@pytest.mark.parametrize("value", [
    {"plugin": "p", "layers": {"seccomp": {"applied": True, "detail": "93 deny rules"}}},
    ["quote \" backslash \\ slash /", "\n\r\t\b\f\x00\x1f\x7f", "é ü 中 😀", "\udcff lone surrogate", ""],
    [0, -1, 2**70, None, True, False, (), {}, ("a", 1)],
])
def test_the_report_json_reads_back_as_json_wrote_it(value: object) -> None:
    text = jsontext.dumps(value)
    assert text.isascii()
    assert json.loads(text) == json.loads(json.dumps(value))


def test_the_report_json_refuses_what_it_cannot_spell() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({1: "x"})
    with pytest.raises(TypeError):
        jsontext.dumps(1.5)


def test_the_seccomp_filter_depends_only_on_the_allowed_socket_families() -> None:
    """host.launch compiles one filter per set of allowed families and puts it in every such policy."""
    assert seccomp.rules(RICH) == seccomp.rules_for(seccomp.allowed_families(RICH))
    off = dataclasses.replace(RICH, network=Network(enabled=False))
    assert seccomp.rules(off) == seccomp.rules(Policy(name="other"))
