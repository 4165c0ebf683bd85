"""README's "always denied" list, proven by attack: a process under the real runner tries each item and
gets the exact errno of the layer that should answer; the same attacks, run unconfined as the same uid,
succeed where the kernel alone would let them.

One sandboxed process per backend runs every attack (tests/integration/kernel_attacks.py) and reports a
JSON map; the tests below assert on it, one test case per attack. Layers are named as in
``sandbox_runner.policy.LAYERS``: seccomp answers first for every syscall it filters (its errno whatever
the arguments), then the kernel's own checks run with the plugin's uid and no capabilities ("uid"),
then Landlock at open, and the bwrap namespaces decide what exists at all.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_runner.layers import cgroup
from tests.integration import kernel_attacks
from tests.integration.test_runner_support import BACKENDS, Jail, attack_python, open_jail

SECRET = "PLUGIN_HOST_TEST_SECRET=hunter2"


@dataclass(frozen=True)
class Denied:
    """What each backend answers, and which layer answers first (per backend where they differ)."""

    bwrap: str
    syscalls: str
    layer: str
    # Why the kernel alone would NOT stop it: the attack succeeds unconfined as the same uid (checked by
    # test_each_attack_works_unconfined), unless this returns a reason it cannot on this machine.
    unconfined_ok: Callable[[], str | None] | None = None

    def on(self, backend: str) -> str:
        return self.bwrap if backend == "bwrap" else self.syscalls


def _sysctl(path: str) -> str | None:
    try:
        return Path("/proc/sys", path).read_text().strip()
    except OSError:
        return None


def always() -> str | None:
    return None


def userns() -> str | None:
    if _sysctl("user/max_user_namespaces") == "0" or _sysctl("kernel/unprivileged_userns_clone") == "0":
        return "unprivileged user namespaces are disabled here"
    if _sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
        return "AppArmor restricts unprivileged user namespaces here"
    return None


def ptrace_scope(most: int) -> Callable[[], str | None]:
    scope = int(_sysctl("kernel/yama/ptrace_scope") or 0)
    return lambda: f"Yama ptrace_scope={scope}" if scope > most else None


def sysctl_is(path: str, *ok: str) -> Callable[[], str | None]:
    value = _sysctl(path)
    return lambda: None if value is None or value in ok else f"{path}={value} here"


def seccomp(errno: str = "EPERM", unconfined_ok: Callable[[], str | None] | None = None) -> Denied:
    return Denied(errno, errno, "seccomp", unconfined_ok)


def bwrap_or_landlock(bwrap: str, why: str, unconfined_ok: Callable[[], str | None] | None = None) -> Denied:
    return Denied(bwrap, "EACCES", f"bwrap: {why}; syscalls backend: landlock", unconfined_ok)


USERNS_EPERM = seccomp(unconfined_ok=userns)
SIGNAL_LAYERS = "bwrap: pid namespace; syscalls backend: landlock signal scope"
KILLED = "SIGSYS"  # libseccomp's action for a syscall of an architecture the filter was not built for
_KCORE = os.path.exists("/proc/kcore")

TABLE: dict[str, Denied] = {
    # -- kernel attack surface: seccomp's DENY_EPERM list -----------------------------------------------
    "io_uring_setup": seccomp(unconfined_ok=sysctl_is("kernel/io_uring_disabled", "0")),
    "bpf_map_create": seccomp(),  # unconfined: EPERM too where kernel.unprivileged_bpf_disabled is set
    "bpf_prog_load": seccomp(),
    "keyctl_user_keyring": seccomp(unconfined_ok=always),
    "keyctl_join_session_keyring": seccomp(unconfined_ok=always),
    "add_key": seccomp(unconfined_ok=always),
    "request_key": seccomp(),  # unconfined: ENOKEY (the lookup ran)
    "perf_event_open_own_process": seccomp(unconfined_ok=sysctl_is("kernel/perf_event_paranoid", "-1", "0", "1", "2")),
    "perf_event_open_whole_cpu": seccomp(),  # unconfined: EACCES (perf_event_paranoid)
    "userfaultfd": seccomp(unconfined_ok=always),  # UFFD_USER_MODE_ONLY is open to any user
    "init_module": seccomp(),  # unconfined: EPERM (no CAP_SYS_MODULE), or ENOSYS without module support
    "finit_module": seccomp(),
    "delete_module": seccomp(),
    "kexec_load": seccomp(),
    "kexec_file_load": seccomp(),
    "reboot": seccomp(),
    "syslog_read": seccomp(),
    "name_to_handle_at": seccomp(unconfined_ok=always),
    "open_by_handle_at": seccomp(),  # unconfined: EPERM (no CAP_DAC_READ_SEARCH)
    "personality_no_aslr": seccomp(unconfined_ok=always),
    "personality_read_implies_exec": seccomp(unconfined_ok=always),
    "personality_mmap_page_zero": seccomp(unconfined_ok=always),
    "personality_high_bits": seccomp(unconfined_ok=always),
    # -- namespaces: unshare/setns denied outright, clone by flag, clone3 answers ENOSYS ------------------------
    "unshare_newuser": USERNS_EPERM,
    "unshare_newuser_newns": USERNS_EPERM,
    "unshare_newns": seccomp(),
    "unshare_newnet": seccomp(),
    "unshare_newpid": seccomp(),
    "unshare_newuts": seccomp(),
    "unshare_newipc": seccomp(),
    "unshare_newcgroup": seccomp(),
    "clone_newuser": USERNS_EPERM,
    "clone_newuser_high_bits": USERNS_EPERM,
    "clone_newns": seccomp(),
    "clone_newnet": seccomp(),
    "clone_newpid": seccomp(),
    "clone3_newuser": seccomp("ENOSYS", unconfined_ok=userns),
    "clone3_plain": seccomp("ENOSYS", unconfined_ok=always),
    # bwrap: the host's processes do not exist in its pid namespace, so not even a pidfd can name them
    "setns_host_netns": Denied("ESRCH", "EPERM", "bwrap: pid namespace; syscalls backend: seccomp"),
    "setns_own_userns": seccomp(),  # unconfined: EINVAL (already in it): EPERM is the filter's
    # -- its terminal: TIOCSTI/TIOCLINUX by seccomp (whatever the high bits), bwrap adds a new session ---------
    "tiocsti_inherited_tty": seccomp(),
    "tiocsti_high_bits": seccomp(),
    "tioclinux": seccomp(),
    "tiocsti_controlling_tty": seccomp(unconfined_ok=sysctl_is("dev/tty/legacy_tiocsti", "1")),
    # -- mounts ------------------------------------------------------------------------------------------------
    "mount_tmpfs": seccomp(),
    "mount_bind_root": seccomp(),
    "umount_proc": seccomp(),
    "pivot_root": seccomp(),
    "chroot": seccomp(),
    "fsopen": seccomp(),
    "open_tree": seccomp(),
    # -- other processes ---------------------------------------------------------------------------------------
    "ptrace_traceme": seccomp(unconfined_ok=ptrace_scope(2)),
    "ptrace_attach_sibling": seccomp(unconfined_ok=ptrace_scope(1)),
    "ptrace_attach_host_process": seccomp(unconfined_ok=ptrace_scope(0)),
    "process_vm_readv_sibling": seccomp(unconfined_ok=ptrace_scope(1)),
    "pidfd_getfd_sibling": seccomp(unconfined_ok=ptrace_scope(1)),
    "read_host_process_environ": bwrap_or_landlock("ENOENT", "pid namespace", unconfined_ok=always),
    "pidfd_signal_host_process": Denied("ESRCH", "EPERM", SIGNAL_LAYERS, always),
    "kill_host_process": Denied("ESRCH", "EPERM", SIGNAL_LAYERS, always),
    # -- sockets without a network grant: every family but AF_UNIX ---------------------------------------------
    "socket_vsock": seccomp("EAFNOSUPPORT", unconfined_ok=lambda: None if os.path.exists("/dev/vsock") else "no vsock"),
    "socket_netlink_route": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socket_netlink_audit": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socket_packet": seccomp("EAFNOSUPPORT"),  # unconfined: EPERM (no CAP_NET_RAW)
    "socket_alg": seccomp("EAFNOSUPPORT"),
    "socket_inet_tcp": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socket_inet_udp": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socket_inet_raw": seccomp("EAFNOSUPPORT"),  # unconfined: EPERM (no CAP_NET_RAW)
    "socket_inet6_tcp": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socket_inet_high_bits": seccomp("EAFNOSUPPORT", unconfined_ok=always),
    "socketpair_inet": seccomp("EAFNOSUPPORT"),  # unconfined: EOPNOTSUPP
    # -- kernel files --------------------------------------------------------------------------------------------
    # root-owned 0644: the uid's permissions answer first, Landlock would next
    "write_proc_sys_core_pattern": Denied("EACCES", "EACCES", "uid (root-owned 0644)"),
    # 0666, guarded only by a capability check at write (unconfined: EPERM): Landlock refuses the open
    "write_proc_sys_ns_last_pid": Denied("EACCES", "EACCES", "landlock (/proc read-only; syscalls: not granted)"),
    "write_sys_power_state": bwrap_or_landlock("ENOENT", "no /sys in its mount namespace"),
    "write_sys_kernel_profiling": bwrap_or_landlock("ENOENT", "no /sys in its mount namespace"),
    "read_proc_kcore": (
        Denied("EACCES", "EACCES", "uid (root-only 0400)") if _KCORE else Denied("ENOENT", "ENOENT", "kernel: no kcore")
    ),
    "read_proc_kmsg": Denied("EACCES", "EACCES", "uid (root-only 0400)"),
    "read_dev_kmsg": bwrap_or_landlock("ENOENT", "not in its /dev"),  # unconfined: EPERM (dmesg_restrict)
    "open_dev_userfaultfd": bwrap_or_landlock("ENOENT", "not in its /dev"),
    "cgroup_escape_to_memory_root": bwrap_or_landlock("ENOENT", "no /sys in its mount namespace"),
    "cgroup_escape_to_the_hosts_cgroup": bwrap_or_landlock("ENOENT", "no /sys in its mount namespace"),
    # -- devices: Landlock grants MAKE_CHAR/MAKE_BLOCK in its data dir, the missing CAP_MKNOD refuses ----------
    "mknod_char_device": Denied("EPERM", "EPERM", "uid (no CAP_MKNOD)"),
    "mknod_block_device": Denied("EPERM", "EPERM", "uid (no CAP_MKNOD)"),
}
if kernel_attacks.ARCH == "x86_64":
    TABLE |= {
        # int 0x80 runs i386's table (26 = ptrace there): the filter kills what is not native x86_64
        "ia32_int80_ptrace": Denied(KILLED, KILLED, "seccomp (bad architecture: kill)", always),
        "x32_abi_ptrace": Denied(KILLED, KILLED, "seccomp (x32 numbers: kill)"),  # unconfined: ENOSYS here
    }
ALLOWED = ("socket_unix", "personality_query")  # what a plugin needs must still work
SETUID = ("setuid_root_binary", "chmod_setuid_own_file")


_ASSERTED: set[str] = set()


def group(*prefixes: str) -> list[str]:
    """The attacks one test asserts (each attack is in exactly one group: see test_every_attack_is_asserted)."""
    names = [name for name in TABLE if name.startswith(prefixes)]
    _ASSERTED.update(names)
    return names


# -- running the attacks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    backend: str  # "bwrap", "syscalls" or "unconfined"
    uid: int
    results: dict[str, dict[str, Any]]
    terminal: bytes  # everything that reached the terminal it was given as stdin and stderr
    target_alive: bool  # the host-side process (same uid) it tried to kill


def _setuid_root_id(jail: Jail) -> Path:
    """A root-owned setuid copy of id(1) inside its read-only code dir, reachable only by the jail's gid."""
    d = jail.code / "suid"
    d.mkdir()
    os.chown(d, 0, jail.uid)
    d.chmod(0o750)
    exe = d / "id"
    shutil.copyfile(shutil.which("id") or "/usr/bin/id", exe)
    os.chown(exe, 0, 0)
    exe.chmod(0o4755)
    return exe


def _cgroup_targets() -> dict[str, str]:
    found = cgroup.hierarchies(frozenset({"memory"})) or cgroup.hierarchies(frozenset({"pids"}))
    if not found:
        return {"memory_root": "/sys/fs/cgroup/cgroup.procs", "the_hosts": "/sys/fs/cgroup/cgroup.procs"}
    h = found[0]
    return {"memory_root": os.path.join(h.mount, "cgroup.procs"), "the_hosts": os.path.join(h.path(""), "cgroup.procs")}


def _drain(fd: int, into: bytearray) -> None:
    for _ in range(4096):  # at most 16 MiB, far more than anything here writes
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every slave end is closed
            return
        if not chunk:
            return
        into += chunk


def run_attacks(jail: Jail, confined: bool) -> Run:
    script = jail.code / "kernel_attacks.py"
    shutil.copyfile(kernel_attacks.__file__, script)
    as_uid: dict[str, Any] = {"user": jail.uid, "group": jail.uid, "extra_groups": []}
    target = subprocess.Popen(["sleep", "60"], env={"PLUGIN_HOST_TEST_SECRET": "hunter2"}, text=True,
                              start_new_session=True, **as_uid)
    jail.procs.append(target)
    ctx = {"host_pid": target.pid, "suid": str(_setuid_root_id(jail)), "scratch": str(jail.data),
           "cgroups": _cgroup_targets()}
    cmd = [attack_python(), "-I", str(script), json.dumps(ctx)]
    master, slave = pty.openpty()
    terminal = bytearray()
    reader = threading.Thread(target=_drain, args=(master, terminal), daemon=True)
    try:
        proc = subprocess.Popen(jail.argv(*cmd) if confined else cmd, stdin=slave, stdout=subprocess.PIPE,
                                stderr=slave, text=True, start_new_session=True, **({} if confined else as_uid))
        jail.procs.append(proc)
        os.close(slave)
        slave = -1
        reader.start()
        out, _ = proc.communicate(timeout=120)
        reader.join(10)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no report: rc={proc.returncode} terminal={bytes(terminal)!r}"
    alive = target.poll() is None
    return Run(jail.backend if confined else "unconfined", jail.uid, json.loads(lines[-1]), bytes(terminal), alive)


@pytest.fixture(scope="module", params=BACKENDS)
def sandboxed(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Every attack, once, by one process under the runner with this backend and no grants."""
    with open_jail(request.param) as jail:
        yield run_attacks(jail, confined=True)


@pytest.fixture(scope="module")
def unconfined() -> Iterator[Run]:
    """The same attacks by a plain process of a fresh uid: what the kernel alone lets through."""
    with open_jail("syscalls") as jail:
        yield run_attacks(jail, confined=False)


def refused(run: Run, name: str) -> None:
    row = TABLE[name]
    expected = row.on(run.backend)
    key = "signal" if expected.startswith("SIG") else "errno"
    got = run.results.get(name)
    assert got == {"ok": False, key: expected}, (
        f"{name} on {run.backend}: expected {expected} from {row.layer}, got {got}"
        + (" -- THE ATTACK SUCCEEDED" if got and got.get("ok") else "")
    )


# -- the denials -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", group("io_uring", "bpf", "keyctl", "add_key", "request_key", "perf", "userfaultfd",
                                         "init_module", "finit_module", "delete_module", "kexec", "reboot", "syslog",
                                         "name_to_handle", "open_by_handle"))
def test_cant_use_kernel_attack_surface(sandboxed: Run, attack: str) -> None:
    """seccomp: EPERM for io_uring, bpf, keyrings, perf events, userfaultfd, modules, kexec, the kernel
    log and file handles, whatever the arguments."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("personality"))
def test_cant_weaken_its_memory_protections(sandboxed: Run, attack: str) -> None:
    """seccomp: personality(2) may only be queried; ASLR off, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO are EPERM."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("unshare", "clone", "setns"))
def test_cant_create_or_join_namespaces(sandboxed: Run, attack: str) -> None:
    """seccomp: unshare and setns EPERM, clone with any CLONE_NEW* flag EPERM (also behind high bits),
    clone3 ENOSYS (its flags are out of a filter's reach; glibc falls back to clone)."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("tioc"))
def test_cant_inject_into_its_terminal(sandboxed: Run, attack: str) -> None:
    """seccomp: TIOCSTI and TIOCLINUX are EPERM on the pty it was given, even once the pty is its
    controlling terminal (where the kernel alone allows TIOCSTI); nothing reaches the terminal."""
    refused(sandboxed, attack)
    assert b"#" not in sandboxed.terminal


@pytest.mark.parametrize("attack", group("mount", "umount", "pivot_root", "chroot", "fsopen", "open_tree"))
def test_cant_mount(sandboxed: Run, attack: str) -> None:
    """seccomp: mount, umount2, pivot_root, chroot and the new mount API (fsopen, open_tree) are EPERM."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("ptrace", "process_vm", "pidfd", "read_host", "kill"))
def test_cant_trace_read_or_signal_other_processes(sandboxed: Run, attack: str) -> None:
    """seccomp: ptrace, process_vm_readv, pidfd_getfd EPERM even on its own sibling. The host's
    processes: bwrap's pid namespace hides them (ESRCH/ENOENT); without it Landlock scopes signals (EPERM)
    and grants no /proc (EACCES)."""
    refused(sandboxed, attack)
    assert sandboxed.target_alive


@pytest.mark.parametrize("attack", group("socket"))
def test_cant_open_sockets_without_a_network_grant(sandboxed: Run, attack: str) -> None:
    """seccomp: every address family but AF_UNIX is EAFNOSUPPORT (vsock, netlink, packet, alg, inet)."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("write_proc", "write_sys", "read_proc", "read_dev", "open_dev"))
def test_cant_touch_kernel_files(sandboxed: Run, attack: str) -> None:
    """/proc/sys and /sys writes, kernel memory and logs, device nodes: bwrap shows no /sys and a minimal
    /dev (ENOENT); the uid's permissions (EACCES) and Landlock (EACCES) refuse what is visible."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("cgroup"))
def test_cant_escape_its_cgroup(sandboxed: Run, attack: str) -> None:
    """Writing its pid into the memory hierarchy's root or the host's own cgroup: bwrap shows no /sys
    (ENOENT); without bwrap Landlock and the uid (root-owned cgroup.procs) refuse (EACCES)."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("mknod"))
def test_cant_make_device_nodes(sandboxed: Run, attack: str) -> None:
    """uid: no CAP_MKNOD, so a /dev/mem or disk node in its own data dir is EPERM."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", group("ia32", "x32"))
def test_cant_use_another_syscall_table(sandboxed: Run, attack: str) -> None:
    """seccomp: a syscall through int 0x80 (i386 numbers) or with the x32 bit is not x86_64's: the
    filter kills the process with SIGSYS instead of letting i386's ptrace through."""
    refused(sandboxed, attack)


@pytest.mark.parametrize("attack", SETUID)
def test_cant_gain_privileges_through_setuid(sandboxed: Run, unconfined: Run, attack: str) -> None:
    """no_new_privs: exec of a setuid-root binary leaves it its own uid (under bwrap its binds are
    nosuid as well); unconfined, the same uid runs it as euid 0. Setting the bit on its own file gains
    nothing either."""
    got = sandboxed.results[attack]
    assert got == {"ok": False, "uid": sandboxed.uid, "euid": sandboxed.uid, **(
        {"mode": "0o4755"} if attack == "chmod_setuid_own_file" else {})}, got
    if attack == "setuid_root_binary":
        assert unconfined.results[attack] == {"ok": True, "uid": unconfined.uid, "euid": 0}


def test_can_still_do_what_a_plugin_needs(sandboxed: Run) -> None:
    """The filter is not a blanket: Unix sockets and a personality query still work."""
    assert {name: sandboxed.results[name]["ok"] for name in ALLOWED} == dict.fromkeys(ALLOWED, True)


def test_every_attack_has_an_expected_answer(sandboxed: Run) -> None:
    assert set(sandboxed.results) == {*TABLE, *ALLOWED, *SETUID}


def test_every_attack_is_asserted() -> None:
    assert set(TABLE) == _ASSERTED


# -- and the attacks are real ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [name for name, row in TABLE.items() if row.unconfined_ok])
def test_each_attack_works_unconfined(unconfined: Run, attack: str) -> None:
    """Without the sandbox the same uid succeeds, so each refusal above is the sandbox's doing."""
    gate = TABLE[attack].unconfined_ok
    why_not = gate() if gate else None
    if why_not:
        pytest.skip(f"the kernel alone refuses {attack}: {why_not}")
    got = unconfined.results[attack]
    assert got.get("ok") is True, got
    if attack == "read_host_process_environ":
        assert SECRET in got["data"]
    if attack == "tiocsti_controlling_tty":
        assert b"#" in unconfined.terminal
    if attack == "kill_host_process":
        assert not unconfined.target_alive
