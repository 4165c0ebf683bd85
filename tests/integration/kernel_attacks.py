"""Runs INSIDE a sandbox (stdlib only): tries every always-denied kernel feature once and prints a JSON map.

``python -I kernel_attacks.py '{"host_pid": N, "suid": PATH, "scratch": DIR, "cgroups": {...}}'`` prints
``{attack: {"ok": bool, "errno": "EPERM" | "signal": "SIGSYS" | ...}}``. Each attack runs in a forked
child (so a success cannot change what the next attack starts from, and a seccomp kill costs one child)
and uses raw syscall numbers, so no libc wrapper can hide or translate what the kernel answered.
tests/integration/test_kernel_attacks.py runs it under the real sandbox runner, and once unconfined as the
same uid to show that each attack is real.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

Result = dict[str, Any]

# name -> (x86_64, aarch64) syscall number, from the kernel's tables (checked against libseccomp's).
_NR = {
    "ioctl": (16, 29),
    "socket": (41, 198),
    "socketpair": (53, 199),
    "clone": (56, 220),
    "kill": (62, 129),
    "ptrace": (101, 117),
    "syslog": (103, 116),
    "personality": (135, 92),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "mount": (165, 40),
    "umount2": (166, 39),
    "reboot": (169, 142),
    "init_module": (175, 105),
    "delete_module": (176, 106),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "kexec_load": (246, 104),
    "mknodat": (259, 33),
    "unshare": (272, 97),
    "perf_event_open": (298, 241),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "setns": (308, 268),
    "process_vm_readv": (310, 270),
    "finit_module": (313, 273),
    "kexec_file_load": (320, 294),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "pidfd_send_signal": (424, 424),
    "io_uring_setup": (425, 425),
    "open_tree": (428, 428),
    "fsopen": (430, 430),
    "pidfd_open": (434, 434),
    "clone3": (435, 435),
    "pidfd_getfd": (438, 438),
}
ARCH = platform.machine()
_COLUMN = {"x86_64": 0, "aarch64": 1}

SIGCHLD = 17
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
TIOCSCTTY, TIOCSTI, TIOCLINUX = 0x540E, 0x5412, 0x541C
AT_FDCWD = -100
HIGH_BIT = 1 << 32  # the kernel truncates these arguments to 32 bits: a filter that compares 64 must not miss

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def refused(code: int) -> Result:
    return {"ok": False, "errno": errno.errorcode.get(code, str(code))}


def _arg(a: Any) -> Any:
    if isinstance(a, int):
        return ctypes.c_long(a)
    if isinstance(a, bytes):
        return ctypes.c_char_p(a)
    if a is None:
        return ctypes.c_void_p(None)
    return ctypes.byref(a)


def raw(name: str, *args: Any) -> int:
    """syscall(2) by number; returns the result or raises OSError with the kernel's errno."""
    ret = int(_libc.syscall(ctypes.c_long(_NR[name][_COLUMN[ARCH]]), *map(_arg, args)))
    if ret < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return ret


def call(name: str, *args: Any) -> Result:
    return {"ok": True, "ret": raw(name, *args)}


def forked_child(ret: int) -> int:
    """After a raw clone/clone3 that succeeded: the child leaves at once, the parent reaps it."""
    if ret == 0:
        os._exit(0)
    os.waitpid(ret, 0)
    return ret


@contextlib.contextmanager
def sibling() -> Iterator[int]:
    """Another process of the same uid in the same sandbox (what a compromised worker would target)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# -- the attacks that need more than one call ------------------------------------------------------------


def bpf_map_create(_: Result) -> Result:
    attr = ctypes.create_string_buffer(72)
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(2, 4, 4, 1), 16)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    return call("bpf", 0, attr, 72)  # BPF_MAP_CREATE


def bpf_prog_load(_: Result) -> Result:
    insns = (ctypes.c_uint64 * 2)(0xB7, 0x95)  # r0 = 0; exit
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 2), 8)  # BPF_PROG_TYPE_SOCKET_FILTER, 2 instructions
    pointers = (ctypes.c_uint64 * 2)(ctypes.addressof(insns), ctypes.addressof(license_))
    ctypes.memmove(ctypes.byref(attr, 8), pointers, 16)
    return call("bpf", 5, attr, 128)  # BPF_PROG_LOAD


def _perf_attr(exclude_kernel: bool) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(128)
    ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 128), 8)  # PERF_TYPE_SOFTWARE, size; config 0 = CPU clock
    flags = (1 << 0) | ((1 << 5) | (1 << 6) if exclude_kernel else 0)  # disabled, exclude_kernel, exclude_hv
    ctypes.memmove(ctypes.byref(attr, 40), ctypes.byref(ctypes.c_uint64(flags)), 8)
    return attr


def _clone(flags: int) -> Callable[[Result], Result]:
    # clone(flags, stack=0: fork-like, ...): the argument order differs per arch, but all the others are 0
    return lambda _: {"ok": True, "ret": forked_child(raw("clone", flags | SIGCHLD, 0, 0, 0, 0))}


def _clone3(flags: int) -> Callable[[Result], Result]:
    def attack(_: Result) -> Result:
        args = (ctypes.c_uint64 * 8)(flags, 0, 0, 0, SIGCHLD, 0, 0, 0)  # struct clone_args, VER0
        return {"ok": True, "ret": forked_child(raw("clone3", args, 64))}

    return attack


def _tty_ioctl(cmd: int, controlling: bool = False) -> Callable[[Result], Result]:
    def attack(_: Result) -> Result:
        if not os.isatty(0):
            return {"ok": False, "error": "stdin is not a tty"}
        if controlling:
            # Make the inherited terminal this session's controlling one: then the kernel alone allows TIOCSTI.
            os.setsid()
            raw("ioctl", 0, TIOCSCTTY, 0)
        return call("ioctl", 0, cmd, ctypes.c_char(b"#"))

    return attack


def ptrace_attach_sibling(_: Result) -> Result:
    with sibling() as pid:
        return call("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH


_SECRET = ctypes.create_string_buffer(b"sibling secret")


def process_vm_readv_sibling(_: Result) -> Result:
    out = ctypes.create_string_buffer(16)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(out), 16)
    remote = (ctypes.c_void_p * 2)(ctypes.addressof(_SECRET), 16)
    with sibling() as pid:
        return call("process_vm_readv", pid, local, 1, remote, 1, 0)


def pidfd_getfd_sibling(_: Result) -> Result:
    with sibling() as pid:
        return call("pidfd_getfd", raw("pidfd_open", pid, 0), 0, 0)


def finit_module(_: Result) -> Result:
    with open("/dev/null", "rb") as f:
        return call("finit_module", f.fileno(), b"", 0)


def name_to_handle_at(_: Result) -> Result:
    handle = (ctypes.c_uint32 * 34)(128)  # struct file_handle with 128 bytes of room
    return call("name_to_handle_at", AT_FDCWD, b"/", handle, ctypes.c_int(), 0)


def open_by_handle_at(ctx: Result) -> Result:
    # "shocker": open any inode of the filesystem holding its data dir by handle, past every mount and bind
    handle = (ctypes.c_uint32 * 4)(8, 1, 2, 0)  # 8 bytes, FILEID_INO32_GEN, inode 2 (the fs root), generation 0
    return call("open_by_handle_at", os.open(ctx["scratch"], os.O_RDONLY), handle, os.O_RDONLY)


def _write(path_of: Callable[[Result], str]) -> Callable[[Result], Result]:
    def attack(ctx: Result) -> Result:
        target = path_of(ctx)
        fd = os.open(target, os.O_WRONLY)
        try:
            # Opening was the hole; writing our pid is the escape itself (for other files, a harmless "0").
            os.write(fd, f"{os.getpid()}\n".encode() if target.endswith("cgroup.procs") else b"0\n")
        finally:
            os.close(fd)
        return {"ok": True}

    return attack


def _read(path_of: Callable[[Result], str]) -> Callable[[Result], Result]:
    def attack(ctx: Result) -> Result:
        with open(path_of(ctx), "rb") as f:
            try:
                return {"ok": True, "data": f.read(64).decode(errors="replace")}
            except OSError as exc:  # opened, which is the hole; some devices refuse a plain read
                return {"ok": True, "read": refused(exc.errno or 0)}

    return attack


def pidfd_signal_host_process(ctx: Result) -> Result:
    # signal 0: the same permission checks as a real signal, and the target stays for the attack after it
    return call("pidfd_send_signal", raw("pidfd_open", ctx["host_pid"], 0), 0, None, 0)


def kill_host_process(ctx: Result) -> Result:
    os.kill(ctx["host_pid"], signal.SIGKILL)
    return {"ok": True}


def _euid_of(exe: str) -> Result:
    # id(1) prints "uid=N gid=N euid=M ..." (euid only when it differs); without /etc/passwd it exits 1.
    out = subprocess.run([exe], capture_output=True, text=True, timeout=10, check=False).stdout
    ids = {k: int(v.split("(")[0]) for k, v in (p.split("=", 1) for p in out.split() if "=" in p) if k != "groups"}
    return {"ok": "euid" in ids, "uid": ids["uid"], "euid": ids.get("euid", ids["uid"])}


def chmod_setuid_own_file(ctx: Result) -> Result:
    mine = os.path.join(ctx["scratch"], "my-id")
    shutil.copyfile(ctx["suid"], mine)
    os.chmod(mine, 0o4755)
    return {**_euid_of(mine), "mode": oct(os.stat(mine).st_mode & 0o7777)}


def _mknod(kind: int, dev: tuple[int, int]) -> Callable[[Result], Result]:
    def attack(ctx: Result) -> Result:
        path = os.path.join(ctx["scratch"], f"dev-{kind}")
        return call("mknodat", AT_FDCWD, path.encode(), kind | 0o666, os.makedev(*dev))

    return attack


def ia32_int80_ptrace(_: Result) -> Result:
    """The 32-bit syscall table (int 0x80) from a 64-bit process: a filter written for x86_64 numbers
    must not let i386's ptrace (26) through."""
    code = bytes.fromhex("53" "b81a000000" "31db" "31c9" "31d2" "31f6" "cd80" "5b" "c3")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    ret = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
    return {"ok": True, "ret": ret} if ret >= 0 else refused(-ret)


def x32_abi_ptrace(_: Result) -> Result:
    ret = int(_libc.syscall(ctypes.c_long(0x40000000 | 521), *(ctypes.c_long(0),) * 4))  # x32's ptrace
    return {"ok": True, "ret": ret} if ret >= 0 else refused(ctypes.get_errno())


def _call(name: str, *args: Any) -> Callable[[Result], Result]:
    return lambda _: call(name, *args)


def scratch(ctx: Result) -> bytes:
    """A directory the plugin owns and may write (its data dir)."""
    return str(ctx["scratch"]).encode()


ATTACKS: dict[str, Callable[[Result], Result]] = {
    # kernel attack surface
    "io_uring_setup": lambda _: call("io_uring_setup", 1, ctypes.create_string_buffer(120)),  # zeroed params
    "bpf_map_create": bpf_map_create,
    "bpf_prog_load": bpf_prog_load,
    # KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING: one keyring shared by every process of the uid
    "keyctl_user_keyring": _call("keyctl", 0, -4, 0),
    "keyctl_join_session_keyring": _call("keyctl", 1, None),  # a new anonymous session keyring
    "add_key": _call("add_key", b"user", b"plugin-host-test", b"x", 1, -2),  # into KEY_SPEC_PROCESS_KEYRING
    "request_key": _call("request_key", b"user", b"plugin-host-test-absent", None, -2),
    "perf_event_open_own_process": lambda _: call("perf_event_open", _perf_attr(True), 0, -1, -1, 0),
    "perf_event_open_whole_cpu": lambda _: call("perf_event_open", _perf_attr(False), -1, 0, -1, 0),
    "userfaultfd": _call("userfaultfd", os.O_CLOEXEC | 1),  # UFFD_USER_MODE_ONLY: what unprivileged users get
    "open_dev_userfaultfd": _read(lambda _: "/dev/userfaultfd"),
    "init_module": _call("init_module", None, 0, b""),
    "finit_module": finit_module,
    "delete_module": _call("delete_module", b"ext4", os.O_NONBLOCK),
    "kexec_load": _call("kexec_load", 0, 0, None, 0),
    "kexec_file_load": _call("kexec_file_load", -1, -1, 1, b"", 0),
    "reboot": _call("reboot", 0, 0, 0, None),  # wrong magic: even root would only get EINVAL
    "syslog_read": lambda _: call("syslog", 3, ctypes.create_string_buffer(4096), 4096),  # READ_ALL
    "name_to_handle_at": name_to_handle_at,
    "open_by_handle_at": open_by_handle_at,
    "personality_no_aslr": _call("personality", 0x0040000),  # ADDR_NO_RANDOMIZE
    "personality_read_implies_exec": _call("personality", 0x0400000),
    "personality_mmap_page_zero": _call("personality", 0x0100000),
    "personality_high_bits": _call("personality", HIGH_BIT | 0x0040000),
    "personality_query": _call("personality", 0xFFFFFFFF),  # allowed: changes nothing
    # namespaces
    "unshare_newuser": _call("unshare", CLONE_NEWUSER),
    "unshare_newuser_newns": _call("unshare", CLONE_NEWUSER | CLONE_NEWNS),
    "unshare_newns": _call("unshare", CLONE_NEWNS),
    "unshare_newnet": _call("unshare", CLONE_NEWNET),
    "unshare_newpid": _call("unshare", CLONE_NEWPID),
    "unshare_newuts": _call("unshare", CLONE_NEWUTS),
    "unshare_newipc": _call("unshare", CLONE_NEWIPC),
    "unshare_newcgroup": _call("unshare", CLONE_NEWCGROUP),
    "clone_newuser": _clone(CLONE_NEWUSER),
    "clone_newns": _clone(CLONE_NEWNS),
    "clone_newnet": _clone(CLONE_NEWNET),
    "clone_newpid": _clone(CLONE_NEWPID),
    "clone_newuser_high_bits": _clone(HIGH_BIT | CLONE_NEWUSER),
    "clone3_newuser": _clone3(CLONE_NEWUSER),
    "clone3_plain": _clone3(0),
    "setns_host_netns": lambda ctx: call("setns", raw("pidfd_open", ctx["host_pid"], 0), CLONE_NEWNET),
    # a harmless target: the kernel alone answers EINVAL (already in it), so EPERM can only be the filter
    "setns_own_userns": lambda _: call("setns", raw("pidfd_open", os.getpid(), 0), CLONE_NEWUSER),
    # the terminal it inherited (the controlling-tty attack last: it takes the terminal over)
    "tiocsti_inherited_tty": _tty_ioctl(TIOCSTI),
    "tiocsti_high_bits": _tty_ioctl(HIGH_BIT | TIOCSTI),
    "tioclinux": _tty_ioctl(TIOCLINUX),
    "tiocsti_controlling_tty": _tty_ioctl(TIOCSTI, controlling=True),
    # mounts
    "mount_tmpfs": lambda ctx: call("mount", b"none", scratch(ctx), b"tmpfs", 0, None),
    "mount_bind_root": lambda ctx: call("mount", b"/", scratch(ctx), None, 0x1000 | 0x4000, None),  # MS_BIND|REC
    "umount_proc": _call("umount2", b"/proc", 2),  # MNT_DETACH
    "pivot_root": _call("pivot_root", b".", b"."),
    "chroot": lambda ctx: call("chroot", scratch(ctx)),
    "fsopen": _call("fsopen", b"tmpfs", 0),
    "open_tree": _call("open_tree", AT_FDCWD, b"/", 1),  # OPEN_TREE_CLONE: a detached copy of / to mount elsewhere
    # other processes
    "ptrace_traceme": _call("ptrace", 0, 0, 0, 0),
    "ptrace_attach_sibling": ptrace_attach_sibling,
    "ptrace_attach_host_process": lambda ctx: call("ptrace", 16, ctx["host_pid"], 0, 0),
    "process_vm_readv_sibling": process_vm_readv_sibling,
    "pidfd_getfd_sibling": pidfd_getfd_sibling,
    "read_host_process_environ": _read(lambda ctx: f"/proc/{ctx['host_pid']}/environ"),
    "pidfd_signal_host_process": pidfd_signal_host_process,
    "kill_host_process": kill_host_process,
    # sockets (family, type, protocol)
    "socket_vsock": _call("socket", 40, 1, 0),
    "socket_netlink_route": _call("socket", 16, 3, 0),
    "socket_netlink_audit": _call("socket", 16, 3, 9),
    "socket_packet": _call("socket", 17, 3, 0x0300),  # ETH_P_ALL, network order
    "socket_alg": _call("socket", 38, 5, 0),
    "socket_inet_tcp": _call("socket", 2, 1, 0),
    "socket_inet_udp": _call("socket", 2, 2, 0),
    "socket_inet_raw": _call("socket", 2, 3, 1),
    "socket_inet6_tcp": _call("socket", 10, 1, 0),
    "socket_inet_high_bits": _call("socket", HIGH_BIT | 2, 1, 0),
    "socketpair_inet": lambda _: call("socketpair", 2, 1, 0, (ctypes.c_int * 2)()),
    "socket_unix": _call("socket", 1, 1, 0),  # allowed
    # kernel files
    "write_proc_sys_core_pattern": _write(lambda _: "/proc/sys/kernel/core_pattern"),
    "write_proc_sys_ns_last_pid": _write(lambda _: "/proc/sys/kernel/ns_last_pid"),  # 0666: no DAC in the way
    "write_sys_power_state": _write(lambda _: "/sys/power/state"),
    "write_sys_kernel_profiling": _write(lambda _: "/sys/kernel/profiling"),
    "read_proc_kcore": _read(lambda _: "/proc/kcore"),
    "read_proc_kmsg": _read(lambda _: "/proc/kmsg"),
    "read_dev_kmsg": _read(lambda _: "/dev/kmsg"),
    "cgroup_escape_to_memory_root": _write(lambda ctx: ctx["cgroups"]["memory_root"]),
    "cgroup_escape_to_the_hosts_cgroup": _write(lambda ctx: ctx["cgroups"]["the_hosts"]),
    # privileges
    "setuid_root_binary": lambda ctx: _euid_of(ctx["suid"]),  # a root-owned setuid copy of id(1)
    "chmod_setuid_own_file": chmod_setuid_own_file,
    "mknod_char_device": _mknod(0o020000, (1, 1)),  # /dev/mem
    "mknod_block_device": _mknod(0o060000, (8, 0)),
}
if ARCH == "x86_64":
    ATTACKS |= {"ia32_int80_ptrace": ia32_int80_ptrace, "x32_abi_ptrace": x32_abi_ptrace}


def isolated(attack: Callable[[Result], Result], ctx: Result, timeout: float = 10.0) -> Result:
    """Run ``attack`` in a forked child; its result, or how it died."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            res = attack(ctx)
        except OSError as exc:
            res = refused(exc.errno or 0)
        except BaseException as exc:
            res = {"ok": False, "error": repr(exc)}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return {"ok": False, "error": "timeout"}
        time.sleep(0.002)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    status = done[1]
    if os.WIFSIGNALED(status):
        return {"ok": False, "signal": signal.Signals(os.WTERMSIG(status)).name}
    return dict(json.loads(data)) if data else {"ok": False, "error": f"exit status {status}"}


def main() -> None:
    ctx: Result = json.loads(sys.argv[1])
    if ARCH not in _COLUMN:
        raise SystemExit(f"no syscall table for {ARCH}")
    print(json.dumps({name: isolated(fn, ctx) for name, fn in ATTACKS.items()}), flush=True)


if __name__ == "__main__":
    main()
