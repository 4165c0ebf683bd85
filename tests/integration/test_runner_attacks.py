"""Escape attempts against the runner itself, on both backends; each asserts the exact failure."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import test_runner_support as support
from tests.integration.test_runner_support import Jail

jail = support.jail  # the fixture, parametrized over both backends

# What an escape attempt meets on each backend: bwrap hides (ENOENT), Landlock alone denies (EACCES).
HIDDEN = {"bwrap": "ENOENT", "syscalls": "EACCES"}


def test_cant_read_etc_shadow(jail: Jail) -> None:
    assert jail.run("read", "/etc/shadow").errno == HIDDEN[jail.backend]


def test_cant_read_shadow_through_a_symlink_in_its_ro_dir(jail: Jail) -> None:
    (jail.code / "link").symlink_to("/etc/shadow")
    assert jail.run("read", str(jail.code / "link")).errno == HIDDEN[jail.backend]


def test_cant_write_outside_its_rw_paths(jail: Jail) -> None:
    # outside/ is 0777 on the host: only the sandbox stands between the plugin and it.
    r = jail.run("write", str(jail.outside / "x"))
    assert r.errno == HIDDEN[jail.backend]
    assert not (jail.outside / "x").exists()


def test_cant_write_its_own_code(jail: Jail) -> None:
    (jail.code).chmod(0o777)
    expected = {"bwrap": "EROFS", "syscalls": "EACCES"}  # read-only bind mount vs Landlock
    assert jail.run("write", str(jail.code / "x")).errno == expected[jail.backend]


def test_can_write_its_rw_path(jail: Jail) -> None:
    r = jail.run("write", str(jail.data / "ok.txt"))
    assert r.result == {"ok": True}
    assert (jail.data / "ok.txt").read_text() == "pwned"
    assert (jail.data / "ok.txt").stat().st_uid == jail.uid


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6"])
@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"])
def test_cant_create_inet_sockets(jail: Jail, family: str, kind: str) -> None:
    assert jail.run("socket", family, kind).errno == "EAFNOSUPPORT"


@pytest.mark.parametrize("family", ["AF_NETLINK", "AF_PACKET"])
def test_cant_create_netlink_or_packet_sockets(jail: Jail, family: str) -> None:
    assert jail.run("socket", family, "SOCK_RAW").errno == "EAFNOSUPPORT"


def test_cant_connect_to_loopback_tcp(jail: Jail) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = str(srv.getsockname()[1])
        assert jail.run("socket", "AF_INET", "SOCK_STREAM", "127.0.0.1", port).errno == "EAFNOSUPPORT"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv


def test_granted_network_reaches_only_granted_ports(jail: Jail, listener: socket.socket) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port, other_port = listener.getsockname()[1], other.getsockname()[1]
        jail.network(True, (port,))
        assert jail.run("socket", "AF_INET", "SOCK_STREAM", "127.0.0.1", str(port)).result == {"ok": True}
        # Landlock refuses the connect to a port not granted.
        r = jail.run("socket", "AF_INET", "SOCK_STREAM", "127.0.0.1", str(other_port))
        assert r.errno == "EACCES"


def test_cant_connect_to_a_unix_socket_outside_its_dirs(jail: Jail) -> None:
    # The host keeps its sockets in 0700 directories. Landlock (ABI <= 7) does not cover connect(2) on
    # pathname sockets, so without bwrap this is plain permissions; with bwrap the path does not exist.
    private = jail.root / "run"
    private.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(private / "s"))
        srv.listen()
        assert jail.run("unix", str(private / "s")).errno == HIDDEN[jail.backend]


def test_cant_connect_to_an_abstract_socket_created_outside(jail: Jail) -> None:
    name = f"@sbx-test-{jail.uid}"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(name.replace("@", "\0", 1))
        srv.listen()
        # bwrap: another network namespace has its own abstract names; syscalls: Landlock scoping.
        expected = {"bwrap": "ECONNREFUSED", "syscalls": "EPERM"}
        assert jail.run("unix", name).errno == expected[jail.backend]


def test_cant_see_host_processes(jail: Jail) -> None:
    r = jail.run("proc")
    if jail.backend == "bwrap":
        assert r.result["pids"] == [1, 2]  # bwrap's init and itself: a pid namespace of its own
    else:
        assert r.errno == "EACCES"  # no pid namespace: /proc is denied outright


def test_cant_signal_host_processes(jail: Jail) -> None:
    expected = {"bwrap": "ESRCH", "syscalls": "EPERM"}
    assert jail.run("kill", str(os.getpid())).errno == expected[jail.backend]


def test_cant_ptrace(jail: Jail) -> None:
    assert jail.run("ptrace").errno == "EPERM"


def test_cant_mount(jail: Jail) -> None:
    assert jail.run("mount").errno == "EPERM"


def test_cant_unshare_a_user_namespace(jail: Jail) -> None:
    assert jail.run("unshare").errno == "EPERM"


def test_cant_hold_capabilities_or_regain_root(jail: Jail) -> None:
    r = jail.run("caps").result
    assert (r["eff"], r["prm"], r["inh"], r["bnd"]) == (0, 0, 0, [])
    assert r["became_root"] is False
    assert r["uid"] == [jail.uid] * 3


def test_cant_read_the_runners_environment(jail: Jail) -> None:
    env = {**os.environ, "SANDBOX_TEST_SECRET": "hunter2"}
    r = jail.run("env", env=env)
    assert r.result["env"] == jail.policy.env


def test_cant_exceed_memory(jail: Jail) -> None:
    r = jail.resources(memory_bytes=64 << 20).run("memory")
    # The cgroup's OOM killer (SIGKILL), or MemoryError where only RLIMIT_AS applies.
    assert r.returncode == -signal.SIGKILL or r.errno == "MemoryError", (r.returncode, r.result)


def test_cant_exceed_processes(jail: Jail) -> None:
    r = jail.resources(processes=8).run("fork", "32")
    assert r.errno == "EAGAIN"
    assert r.result["forked"] < 8


def test_cant_exceed_file_size(jail: Jail) -> None:
    r = jail.resources(file_size_bytes=1 << 20).run("fsize", str(jail.data / "big"), "2")
    assert r.errno == "EFBIG"
    assert (jail.data / "big").stat().st_size == 1 << 20


def test_cant_exceed_cpu_seconds_in_a_worker(jail: Jail) -> None:
    r = jail.resources(cpu_seconds=1).run("spin_child")
    assert r.result["signal"] == signal.SIGXCPU


def test_cant_exceed_cpu_seconds(jail: Jail) -> None:
    assert jail.resources(cpu_seconds=1).run("spin").returncode == -signal.SIGXCPU


def test_multiprocessing_works_with_a_private_dev_shm(jail: Jail) -> None:
    """multiprocessing's Lock, Queue, Value and Pool (and ProcessPoolExecutor) need POSIX semaphores, which
    live in /dev/shm: with bubblewrap the sandbox has a tmpfs of its own there, where nothing of the host's
    shows; without it /dev/shm is the machine's, shared by everyone, and stays denied."""
    planted = Path(f"/dev/shm/plugin-host-test-{os.getpid()}")
    planted.write_text("the host's")
    try:
        r = jail.run("semlock")
    finally:
        planted.unlink()
    if jail.backend == "bwrap":
        assert r.result == {"ok": True, "value": 42, "shm": []}
    else:
        assert r.errno == "EACCES"


def test_a_pty_of_its_own_works_where_its_devpts_is_private(jail: Jail) -> None:
    """pty.fork, pexpect and web terminals need /dev/ptmx: with bubblewrap the sandbox has a devpts instance of
    its own (its first pty is number 0, whatever the host has open), and pushing input into a terminal is still
    refused; without it /dev/pts is the host's and stays denied."""
    r = jail.run("pty")
    if jail.backend == "bwrap":
        assert r.result == {"ok": True, "tty": "/dev/pts/0", "ptys": ["0", "ptmx"], "read": "typed\n",
                            "tiocsti": "EPERM"}
    else:
        assert r.errno == "EACCES"


def test_threads_still_work(jail: Jail) -> None:
    # clone3 answers ENOSYS; glibc must fall back to clone for pthread_create.
    assert jail.run("threads").result == {"ok": True}
