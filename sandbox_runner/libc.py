"""ctypes bindings the layers need (prctl, raw syscalls, capget), resolved before Landlock hides libraries."""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~14 ms of every inner stage's start)
if TYPE_CHECKING:
    from typing import Any

PR_SET_PDEATHSIG = 1
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_CAP_VERSION_3 = 0x20080522
# close_range(2) has one number on every architecture (the unified syscall table, Linux 5.9);
# CLOSE_RANGE_CLOEXEC arrived in 5.11.
_NR_CLOSE_RANGE = 436
_CLOSE_RANGE_CLOEXEC = 1 << 2
_MAX_FD = 0xFFFFFFFF  # ~0U: "to the last fd"


# dlopen(NULL): the libc this interpreter already uses, so no ctypes.util.find_library (which runs ldconfig
# and fails once Landlock or the sandbox's mount namespace hides it). A handle on what is already mapped.
_LIBC = ctypes.CDLL(None, use_errno=True)


def libc() -> ctypes.CDLL:
    return _LIBC


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    fn = libc().prctl
    fn.restype = ctypes.c_int
    args = (ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    return _check(fn(ctypes.c_int(option), *args), f"prctl({option})")


def syscall(number: int, *args: Any) -> int:
    """syscall(2); ``args`` are ints or ctypes pointers (``ctypes.byref``)."""
    fn = libc().syscall
    fn.restype = ctypes.c_long
    conv = [a if not isinstance(a, int) else ctypes.c_long(a) for a in args]
    return _check(fn(ctypes.c_long(number), *conv), f"syscall({number})")


CLONE_NEWNET = 0x40000000


def join_netns(fd: int) -> None:
    """setns(2) into the network namespace ``fd`` names, then close ``fd`` (nothing after us may hold it)."""
    fn = libc().setns
    fn.restype = ctypes.c_int
    try:
        _check(fn(ctypes.c_int(fd), ctypes.c_int(CLONE_NEWNET)), "setns(CLONE_NEWNET)")
    finally:
        os.close(fd)


def cloexec_from(first: int) -> None:
    """Mark every fd >= ``first`` close-on-exec (the fds stay usable until exec; those to keep are made
    inheritable again by whoever hands them over). close_range(2) when the kernel has it; else /proc/self/fd."""
    try:
        syscall(_NR_CLOSE_RANGE, first, _MAX_FD, _CLOSE_RANGE_CLOEXEC)
        return
    except OSError:
        pass  # ENOSYS (< 5.9) or EINVAL (no CLOEXEC flag, < 5.11)
    for name in os.listdir("/proc/self/fd"):  # raises when /proc is missing: the caller fails closed
        fd = int(name)
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the fd listdir itself used, closed by now


SECCOMP_MODE_FILTER = 2
BPF_INSN_SIZE = 8  # struct sock_filter
BPF_MAXINSNS = 4096


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_filter(bpf: bytes) -> None:
    """Install a classic-BPF seccomp program (libseccomp's ``seccomp_export_bpf`` output) on this thread, as
    ``seccomp_load`` does without its TSYNC/LOG attributes. The kernel requires no_new_privs (or
    CAP_SYS_ADMIN) and checks the program itself."""
    count, rest = divmod(len(bpf), BPF_INSN_SIZE)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise OSError(22, f"seccomp: a BPF program of {len(bpf)} bytes is not 1-{BPF_MAXINSNS} instructions")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    fn = libc().prctl
    fn.restype = ctypes.c_int
    _check(fn(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
              ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_SECCOMP)")


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities() -> None:
    """capset(2) with every set empty (lowering is always allowed)."""
    fn = libc().capset
    fn.restype = ctypes.c_int
    hdr, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(fn(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) capability masks of this thread, via capget(2)."""
    Data = _CapData
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (Data * 2)()
    fn = libc().capget
    fn.restype = ctypes.c_int
    _check(fn(ctypes.byref(hdr), ctypes.byref(data)), "capget")

    def join(field: str) -> int:
        return int(getattr(data[0], field)) | (int(getattr(data[1], field)) << 32)

    return join("effective"), join("permitted"), join("inheritable")
