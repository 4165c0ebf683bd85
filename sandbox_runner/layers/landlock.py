"""Landlock: filesystem allow-list, TCP bind/connect deny, abstract-socket and signal scoping (ABI 1..7)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from sandbox_runner import libc
from sandbox_runner.errors import LayerFailed, LayerUnavailable
from sandbox_runner.layers import Step, unavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (sandbox_runner.inner imports this)
if TYPE_CHECKING:
    from sandbox_runner.policy import Policy

# Generic syscall numbers (identical on x86_64, aarch64, riscv64 ...).
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Rights that may be granted on a non-directory; the kernel rejects a rule mixing in directory rights.
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_EXEC = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
DEV_RW = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE  # "> /dev/null" opens with O_TRUNC


def fs_handled(abi: int) -> int:
    """Every filesystem right this ABI knows: handling all of them is what makes the list an allow-list."""
    if abi <= 0:
        return 0
    top = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)
    return (1 << top) - 1


def net_handled(abi: int, policy: Policy) -> int:
    if abi < 4:
        return 0
    if policy.network.enabled and not policy.network.connect_ports:
        return NET_BIND_TCP  # any port may be connected to
    return NET_BIND_TCP | NET_CONNECT_TCP


def scoped(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


def ruleset_attr_size(abi: int) -> int:
    # struct landlock_ruleset_attr grew: fs (ABI 1), + net (ABI 4), + scoped (ABI 6); older kernels
    # reject a larger struct with non-zero tail, so pass only what this ABI knows.
    return 8 if abi < 4 else 16 if abi < 6 else 24


class Plan:
    """The rules to apply (a plain class: a NamedTuple would import typing into the inner stage)."""

    __slots__ = ("abi", "connect_ports", "paths")

    def __init__(self, abi: int, paths: tuple[tuple[str, int], ...], connect_ports: tuple[int, ...]) -> None:
        self.abi = abi
        self.paths = paths  # (path, rights on a directory; masked to FILE_RIGHTS for files)
        self.connect_ports = connect_ports


def plan(policy: Policy, abi: int, ro: tuple[str, ...], rw: tuple[str, ...]) -> Plan:
    """Pure: the rules for this ABI. ``ro``/``rw`` are extra paths the runtime needs (system, /tmp, /dev)."""
    handled = fs_handled(abi)
    rules: list[tuple[str, int]] = [(p, READ_EXEC & handled) for p in (*ro, *policy.ro_paths)]
    rules += [(p, handled) for p in (*rw, *policy.rw_paths)]
    ports = policy.network.connect_ports if net_handled(abi, policy) & NET_CONNECT_TCP else ()
    return Plan(abi, tuple(rules), tuple(ports) if policy.network.enabled else ())


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def abi_version() -> tuple[int, str]:
    """(ABI, detail); ABI 0 when Landlock is missing or disabled."""
    try:
        abi = libc.syscall(SYS_CREATE_RULESET, ctypes.c_void_p(None), 0, CREATE_RULESET_VERSION)
    except OSError as exc:
        why = {errno.ENOSYS: "kernel has no Landlock", errno.EOPNOTSUPP: "Landlock disabled at boot"}
        return 0, why.get(exc.errno or 0, str(exc))
    return abi, f"ABI {abi}"


def prepare(policy: Policy, ro: tuple[str, ...], rw: tuple[str, ...], dev_rw: tuple[str, ...]) -> Step:
    abi, detail = abi_version()
    if abi == 0:
        return unavailable("landlock", detail)
    if policy.network.enabled and policy.network.connect_ports and abi < 4:
        return unavailable("landlock", f"ABI {abi} < 4 cannot restrict TCP ports")
    p = plan(policy, abi, ro, rw)
    dev = tuple((d, DEV_RW & fs_handled(abi)) for d in dev_rw)
    full = Plan(p.abi, p.paths + dev, p.connect_ports)
    return Step("landlock", lambda: _apply(policy, full))


def _apply(policy: Policy, p: Plan) -> str:
    attr = _RulesetAttr(fs_handled(p.abi), net_handled(p.abi, policy), scoped(p.abi))
    try:
        ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ruleset_attr_size(p.abi), 0)
    except OSError as exc:
        raise LayerUnavailable("landlock", f"create_ruleset: {exc.strerror}") from exc
    try:
        n = sum(_add_path(ruleset, path, access) for path, access in p.paths)
        for port in p.connect_ports:
            rule = _NetPort(NET_CONNECT_TCP, port)
            libc.syscall(SYS_ADD_RULE, ruleset, RULE_NET_PORT, ctypes.byref(rule), 0)
        libc.syscall(SYS_RESTRICT_SELF, ruleset, 0)
    except OSError as exc:
        raise LayerFailed("landlock", str(exc)) from exc
    finally:
        os.close(ruleset)
    net = "tcp bind denied" if attr.net else "tcp not covered"
    if attr.net & NET_CONNECT_TCP:
        net += f", connect only to {list(p.connect_ports)}"
    return f"ABI {p.abi}: {n} path rules; {net}; scoped={'yes' if attr.scoped else 'no'}"


def _add_path(ruleset: int, path: str, access: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return 0  # absent, or unreachable for this uid anyway: stays denied
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FILE_RIGHTS
        rule = _PathBeneath(access, fd)
        libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(fd)
    return 1
