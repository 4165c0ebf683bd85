"""seccomp: default-allow filter that denies kernel attack surface and non-Unix sockets; loaded last.

The filter is compiled by libseccomp (pyseccomp) where that is cheap (:func:`compile_bpf`, in the outer stage)
and handed to the inner stage as a raw BPF program, which it loads with one prctl: pyseccomp imports typing
and weakref (~30 ms of every plugin start inside the sandbox). Must not import typing, so the inner stage
that imports this module does not pay for it either.
"""

from __future__ import annotations

import _thread
import errno
import os
import sys

from sandbox_runner import libc
from sandbox_runner.errors import LayerFailed
from sandbox_runner.layers import Step, unavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    from sandbox_runner.policy import Policy

# (BPF program, detail): what the filter denies, for the layer report; (None, why) when it cannot be built.
Compiled = tuple[bytes | None, str]

# Kernel attack surface a web plugin never needs; EPERM, like an unprivileged caller would get.
DENY_EPERM = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "vhangup",
    "uselib",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
)
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
TIOCSTI = 0x5412  # push bytes into the terminal's input: a classic sandbox escape
TIOCLINUX = 0x541C
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) reads the persona without changing it
SOCK_TYPE_MASK = 0xF
SOCK_RAW = 3
SOCK_PACKET = 10
# Address families are small ints; every value from 0 to this bound is listed explicitly, and anything
# at or above it (including values with the upper 32 bits set, which the kernel truncates) is denied.
FAMILY_BOUND = 64
U32 = 0xFFFFFFFF

# Comparison operators, as numbered by libseccomp (scmp_compare).
OP_NE, OP_EQ, OP_GE, OP_MASKED_EQ = 1, 4, 5, 7
# Linux's address family numbers (socket.AF_*, whose module costs the inner stage an enum import per start).
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10


class Rule:
    """Return ``-errno`` from ``syscall`` when all ``args`` (index, op, datum_a, datum_b) match."""

    __slots__ = ("args", "errno", "syscall")

    def __init__(self, syscall: str, errno: int, args: tuple[tuple[int, int, int, int], ...] = ()) -> None:
        self.syscall = syscall
        self.errno = errno
        self.args = args

    def _key(self) -> tuple[str, int, tuple[tuple[int, int, int, int], ...]]:
        return self.syscall, self.errno, self.args

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Rule) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Rule{self._key()!r}"


def allowed_families(policy: Policy) -> frozenset[int]:
    # AF_NETLINK stays denied even with network: it reaches routing/audit/netfilter code, and glibc's
    # getaddrinfo falls back to assuming IPv4+IPv6 when it cannot open one.
    if policy.network.enabled:
        return frozenset({AF_UNIX, AF_INET, AF_INET6})
    return frozenset({AF_UNIX})


def rules(policy: Policy) -> list[Rule]:
    """Pure: the whole rule table for ``policy``."""
    return rules_for(allowed_families(policy))


def rules_for(allowed: frozenset[int]) -> list[Rule]:
    """Pure: the whole rule table, which depends on nothing but the socket families a policy allows."""
    table = [Rule(name, errno.EPERM) for name in DENY_EPERM]
    # ENOSYS makes glibc fall back to clone(2), whose flags are visible to the filter (clone3's are not).
    table.append(Rule("clone3", errno.ENOSYS))
    table += [Rule("clone", errno.EPERM, ((0, OP_MASKED_EQ, flag, flag),)) for flag in CLONE_NAMESPACE_FLAGS]
    # ioctl's cmd is an unsigned int in the kernel: compare only the low 32 bits so high junk cannot dodge.
    table += [Rule("ioctl", errno.EPERM, ((1, OP_MASKED_EQ, U32, cmd),)) for cmd in (TIOCSTI, TIOCLINUX)]
    # personality(2) could switch off ASLR (ADDR_NO_RANDOMIZE), make readable memory executable
    # (READ_IMPLIES_EXEC) or map page zero at exec (MMAP_PAGE_ZERO): old, little-tested kernel paths no web
    # plugin needs (Docker's default profile restricts it too). Only the query passes: libseccomp allows
    # one comparison per argument, so an allow-list of values cannot be written in a default-allow filter.
    # A value with high bits set is refused too (the kernel would truncate it), which errs the safe way.
    table.append(Rule("personality", errno.EPERM, ((0, OP_NE, PERSONALITY_QUERY, 0),)))
    for name in ("socket", "socketpair"):
        table += [
            Rule(name, errno.EAFNOSUPPORT, ((0, OP_EQ, fam, 0),)) for fam in range(FAMILY_BOUND) if fam not in allowed
        ]
        table.append(Rule(name, errno.EAFNOSUPPORT, ((0, OP_GE, FAMILY_BOUND, 0),)))
        # Raw and packet sockets of an allowed family (spoofing, sniffing): EPERM, as without CAP_NET_RAW.
        # Only for allowed families, so a denied family always answers EAFNOSUPPORT whatever the type.
        table += [
            Rule(name, errno.EPERM, ((0, OP_EQ, fam, 0), (1, OP_MASKED_EQ, SOCK_TYPE_MASK, kind)))
            for fam in sorted(allowed)
            for kind in (SOCK_RAW, SOCK_PACKET)
        ]
    return table


_IMPORTING = _thread.allocate_lock()  # the host imports it from several threads (a worker per plugin)


def _import() -> ModuleType | str:
    """pyseccomp, or why it is unusable. One thread at a time: the stand-in below is put into sys.modules and
    ctypes and taken out again, and another thread meanwhile would take it for the real module, or find
    ``ctypes.util`` gone under its feet (AttributeError: module 'ctypes' has no attribute 'util')."""
    with _IMPORTING:
        return _import_unlocked()


def _import_unlocked() -> ModuleType | str:
    # pyseccomp resolves libc and libseccomp with ctypes.util.find_library at import, which runs `ldconfig -p`
    # twice (~20 ms per start-up, and inside the sandbox); dlopen finds glibc's sonames through ld.so.cache
    # anyway. Where ctypes.util is not loaded yet (the inner stage), pyseccomp gets a stand-in that only knows
    # those two names: the real module costs another ~10 ms of imports (subprocess, shutil, tempfile).
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    if "pyseccomp" not in sys.modules and "ctypes.util" not in sys.modules:
        import ctypes

        stand_in = type(sys)("ctypes.util")
        stand_in.find_library = known.get  # type: ignore[attr-defined]
        sys.modules["ctypes.util"] = ctypes.util = stand_in
        try:
            import pyseccomp

            fast: ModuleType = pyseccomp
            return fast
        except (ImportError, OSError):
            pass  # not glibc's sonames, or no pyseccomp/libseccomp: the real find_library decides below
        finally:
            del sys.modules["ctypes.util"], ctypes.util
    import ctypes.util

    real = ctypes.util.find_library
    ctypes.util.find_library = lambda name: known.get(name) or real(name)
    try:
        import pyseccomp
    except OSError:  # not glibc's sonames: let find_library look
        ctypes.util.find_library = real
        try:
            import pyseccomp
        except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
            return f"pyseccomp unusable: {exc}"
    except ImportError as exc:
        return f"pyseccomp unusable: {exc}"
    finally:
        ctypes.util.find_library = real
    mod: ModuleType = pyseccomp
    return mod


def compiled(policy: Policy) -> Compiled:
    """The filter the host compiled into the policy (``Policy.seccomp_filter``), else compiled here."""
    given = policy.seccomp_filter
    if given is not None:
        return bytes.fromhex(given[0]), given[1]
    return compile_bpf(allowed_families(policy))


def compile_bpf(allowed: frozenset[int]) -> Compiled:
    """The filter (:func:`rules_for`) as libseccomp exports it for this machine's architecture, with the
    report's detail; (None, why) when libseccomp is unusable here."""
    mod = _import()
    if isinstance(mod, str):
        return None, mod
    table = rules_for(allowed)
    try:
        flt, skipped = build(mod, table)
        bpf = export(flt)
    except OSError as exc:
        return None, f"cannot build filter: {exc}"
    note = f"; unknown to libseccomp: {', '.join(skipped)}" if skipped else ""
    return bpf, f"{len(table) - len(skipped)} deny rules{note}"


def export(flt: Any) -> bytes:
    """seccomp_export_bpf into a memfd: the program seccomp_load would install."""
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:

        class _File:
            def fileno(self) -> int:
                return fd

        flt.export_bpf(_File())
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def prepare(policy: Policy, handed: Compiled | None = None) -> Step:
    """``handed``: what the outer stage handed over (:func:`compiled`); else it is built here."""
    bpf, detail = handed if handed is not None else compiled(policy)
    if bpf is None:
        return unavailable("seccomp", detail)
    program = bpf

    def run() -> str:
        try:
            libc.load_seccomp_filter(program)
        except OSError as exc:
            raise LayerFailed("seccomp", f"load: {exc}") from exc
        return detail

    return Step("seccomp", run)


def build(mod: ModuleType, table: list[Rule]) -> tuple[Any, list[str]]:
    """A loaded-later pyseccomp filter for ``table``; names this libseccomp does not know are returned."""
    flt = mod.SyscallFilter(mod.ALLOW)
    skipped: list[str] = []
    for rule in table:
        nr = mod.resolve_syscall(mod.Arch.NATIVE, rule.syscall)
        if nr < 0:
            skipped.append(rule.syscall)
            continue
        args = [mod.Arg(i, op, a, b) for i, op, a, b in rule.args]
        flt.add_rule(mod.ERRNO(rule.errno), nr, *args)
    return flt, sorted(set(skipped))
