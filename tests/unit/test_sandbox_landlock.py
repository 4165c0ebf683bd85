"""Landlock access masks and attribute sizes per ABI, and the rule plan built from a policy."""

from __future__ import annotations

import pytest

from sandbox_runner.layers import landlock as ll
from sandbox_runner.policy import Network, Policy


@pytest.mark.parametrize(("abi", "top"), [(1, 13), (2, 14), (3, 15), (4, 15), (5, 16), (6, 16), (7, 16)])
def test_every_fs_right_the_abi_knows_is_handled(abi: int, top: int) -> None:
    assert ll.fs_handled(abi) == (1 << top) - 1


@pytest.mark.parametrize(("abi", "size"), [(1, 8), (3, 8), (4, 16), (5, 16), (6, 24), (7, 24)])
def test_ruleset_attr_size_matches_the_abi(abi: int, size: int) -> None:
    assert ll.ruleset_attr_size(abi) == size


def test_tcp_rules_need_abi_4_and_scoping_abi_6() -> None:
    off = Policy(name="x")
    assert ll.net_handled(3, off) == 0
    assert ll.net_handled(4, off) == ll.NET_BIND_TCP | ll.NET_CONNECT_TCP
    assert ll.scoped(5) == 0
    assert ll.scoped(6) == ll.SCOPE_ABSTRACT_UNIX_SOCKET | ll.SCOPE_SIGNAL


def test_network_with_any_port_still_denies_bind() -> None:
    assert ll.net_handled(7, Policy(name="x", network=Network(enabled=True))) == ll.NET_BIND_TCP


def test_plan_gives_ro_paths_read_exec_and_rw_paths_everything() -> None:
    policy = Policy(name="x", ro_paths=("/code",), rw_paths=("/data",), network=Network(True, (443,)))
    plan = ll.plan(policy, 7, ro=("/usr",), rw=("/tmp",))
    rights = dict(plan.paths)
    assert rights["/usr"] == rights["/code"] == ll.FS_EXECUTE | ll.FS_READ_FILE | ll.FS_READ_DIR
    assert rights["/data"] == rights["/tmp"] == ll.fs_handled(7)
    assert plan.connect_ports == (443,)


def test_no_connect_ports_without_network() -> None:
    assert ll.plan(Policy(name="x", network=Network(False, (443,))), 7, (), ()).connect_ports == ()
