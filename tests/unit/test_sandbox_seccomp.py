"""The seccomp rule table: what is denied, with which errno, and which socket families remain."""

from __future__ import annotations

import errno
import socket

import pytest

from sandbox_runner import libc
from sandbox_runner.layers import seccomp
from sandbox_runner.policy import Network, Policy

OFF = Policy(name="off")
ON = Policy(name="on", network=Network(enabled=True))


def denied_families(policy: Policy) -> set[int]:
    out = set()
    for rule in seccomp.rules(policy):
        if rule.syscall == "socket" and rule.errno == errno.EAFNOSUPPORT and rule.args[0][1] == seccomp.OP_EQ:
            out.add(rule.args[0][2])
    return out


def test_kernel_attack_surface_answers_eperm() -> None:
    table = {r.syscall: r.errno for r in seccomp.rules(OFF) if not r.args}
    for name in (
        "ptrace",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "keyctl",
        "perf_event_open",
        "io_uring_setup",
        "kexec_load",
        "init_module",
        "userfaultfd",
        "open_by_handle_at",
    ):
        assert table[name] == errno.EPERM, name


def test_clone3_answers_enosys_so_glibc_falls_back_to_filterable_clone() -> None:
    assert seccomp.Rule("clone3", errno.ENOSYS) in seccomp.rules(OFF)
    flags = {r.args[0][2] for r in seccomp.rules(OFF) if r.syscall == "clone"}
    assert 0x10000000 in flags and 0x20000000 in flags and len(flags) == 7  # CLONE_NEWUSER, NEWPID ...


def test_without_network_only_unix_sockets_remain() -> None:
    denied = denied_families(OFF)
    assert socket.AF_UNIX not in denied
    assert {socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET} <= denied
    assert seccomp.Rule("socket", errno.EAFNOSUPPORT, ((0, seccomp.OP_GE, 64, 0),)) in seccomp.rules(OFF)


def test_with_network_inet_is_allowed_but_netlink_packet_and_raw_are_not() -> None:
    denied = denied_families(ON)
    assert socket.AF_INET not in denied and socket.AF_INET6 not in denied
    assert {socket.AF_NETLINK, socket.AF_PACKET} <= denied
    raw = [r for r in seccomp.rules(ON) if r.syscall == "socket" and r.errno == errno.EPERM]
    assert {(r.args[0][2], r.args[1][3]) for r in raw} >= {(socket.AF_INET, 3), (socket.AF_INET6, 3)}


def test_tiocsti_is_matched_on_the_low_32_bits_only() -> None:
    ioctl = [r for r in seccomp.rules(OFF) if r.syscall == "ioctl"]
    assert seccomp.Rule("ioctl", errno.EPERM, ((1, seccomp.OP_MASKED_EQ, 0xFFFFFFFF, 0x5412),)) in ioctl


def test_the_compiled_filter_is_a_whole_bpf_program_with_the_reported_rule_count() -> None:
    bpf, detail = seccomp.compile_bpf(seccomp.allowed_families(OFF))
    if bpf is None:
        pytest.skip(f"libseccomp unusable here: {detail}")
    assert len(bpf) % libc.BPF_INSN_SIZE == 0 and 0 < len(bpf) // libc.BPF_INSN_SIZE <= libc.BPF_MAXINSNS
    count = int(detail.split(" deny rules")[0])
    assert count == len(seccomp.rules(OFF)) or (count < len(seccomp.rules(OFF)) and "unknown to libseccomp" in detail)


@pytest.mark.parametrize("program", [b"", b"\x06\x00\x00\x00\x00\x00\xff", b"\x00" * 8 * (libc.BPF_MAXINSNS + 1)])
def test_a_program_the_kernel_could_not_take_is_refused_before_prctl(program: bytes) -> None:
    with pytest.raises(OSError, match="not 1-4096 instructions"):
        libc.load_seccomp_filter(program)
