"""Create a plugin's network namespace from the host side: loopback up and the egress listeners bound inside.

A socket belongs to the namespace it was created in, whoever accepts on it later. So one short-lived thread
enters a fresh namespace (``unshare(CLONE_NEWNET)`` acts on the calling thread only), brings ``lo`` up, binds
the listeners, and returns to the host's namespace; the egress process accepts on those sockets from the
host side and connects out from there. The sandbox joins the namespace through the fd returned here
(``Policy.network.netns_fd``). Needs CAP_SYS_ADMIN (a root host).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PROXY_PORT = 3128  # where HTTP(S)_PROXY points inside every plugin's namespace


class NetnsUnavailable(OSError):
    """This machine cannot give a plugin its own network namespace (not root, or namespaces blocked)."""


@dataclass
class Netns:
    fd: int  # an O_RDONLY fd of /proc/thread-self/ns/net of the new namespace
    listeners: list[socket.socket]

    def close(self) -> None:
        for s in self.listeners:
            s.close()
        self.listeners = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create(binds: list[tuple[str, int]]) -> Netns:
    """A new namespace with ``lo`` up and a listening TCP socket on each (address, port) in ``binds``."""
    result: list[Netns | BaseException] = []
    t = threading.Thread(target=_in_thread, args=(binds, result), name="netns-create")
    t.start()
    t.join()
    out = result[0]
    if isinstance(out, BaseException):
        raise out
    return out


def _in_thread(binds: list[tuple[str, int]], result: list[Netns | BaseException]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            result.append(NetnsUnavailable(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}"))
            return
        made: list[socket.socket] = []
        fd = -1
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
            for addr, port in binds:
                s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
                made.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))
                s.listen(128)
            result.append(Netns(fd, made))
        except BaseException as exc:
            for s in made:
                s.close()
            if fd >= 0:
                os.close(fd)
            result.append(exc)
        finally:
            # Back home before the thread ends (and before anything else runs on it).
            if libc.setns(home, CLONE_NEWNET) != 0:
                os._exit(70)  # a host thread stuck in a plugin's namespace must not go on
    finally:
        os.close(home)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def available() -> tuple[bool, str]:
    """(can this host give plugins their own network namespace with egress listeners, detail)."""
    try:
        ns = create([("127.0.0.1", PROXY_PORT)])
    except OSError as exc:
        return False, str(exc)
    ns.close()
    return True, "own network namespace per plugin; egress through the host's filtering proxy"
