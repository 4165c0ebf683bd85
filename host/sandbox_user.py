"""The plugin's user inside its sandbox: the /etc/passwd and /etc/group the runner shows instead of the host's.

Libraries ask who they run as (``getpass.getuser()``, ``pwd.getpwuid(os.getuid())``, ``~``; GitPython, pip,
tarfile ...) and fail with ``KeyError: 'getpwuid(): uid not found'`` when the uid has no entry. The host's own
files stay hidden (they name every account of the machine), so each plugin gets generated ones: its uid under
its own name with its data dir as home, plus ``root`` and ``nobody``/``nogroup``, which own what the plugin sees
of the system (and, in a user namespace, whatever is unmapped) and are the same on every Linux machine.

The files are root's, 0644, in ``run/`` (which the sandbox never sees); the bwrap backend binds them read-only.
The syscalls backend cannot (no mount namespace): there ``USER``/``LOGNAME``/``HOME`` still make
``getpass.getuser()`` and ``~`` work, while ``pwd.getpwuid`` finds no entry (the host's /etc/passwd stays denied).
"""

from __future__ import annotations

import os
from pathlib import Path

from host.layout import Layout

NOLOGIN = "/usr/sbin/nologin"
# (name, id, home) of the accounts every sandbox shows besides the plugin's own.
_FIXED_USERS = (("root", 0, "/nonexistent"), ("nobody", 65534, "/nonexistent"))
_FIXED_GROUPS = (("root", 0), ("nogroup", 65534))
_UNSAFE = (":", "\n", "\r", "\0")


def sandbox_ids(uid: int | None) -> tuple[int, int]:
    """(uid, gid) the plugin has inside: its own on a root host; the host's on others (bwrap maps the host's
    ids to the same numbers in its user namespace)."""
    if uid is not None:
        return uid, uid
    return os.getuid(), os.getgid()


def passwd_text(name: str, uid: int, gid: int, home: str) -> str:
    if any(c in home for c in _UNSAFE):
        raise ValueError(f"{home!r}: a data dir path with ':' or a line break cannot be a passwd home")
    own = f"{name}:x:{uid}:{gid}:plugin {name}:{home}:{NOLOGIN}"
    return _lines(own, [(n, i, f"{n}:x:{i}:{i}:{n}:{h}:{NOLOGIN}") for n, i, h in _FIXED_USERS], name, uid)


def group_text(name: str, gid: int) -> str:
    return _lines(f"{name}:x:{gid}:", [(n, i, f"{n}:x:{i}:") for n, i in _FIXED_GROUPS], name, gid)


def _lines(own: str, fixed: list[tuple[str, int, str]], name: str, id_: int) -> str:
    """root first, then the plugin, then the rest; a fixed account sharing the plugin's name or id is left
    out (a plugin may be called "root": it is the only one of that name, and keeps its own uid)."""
    kept = [line for n, i, line in fixed if n != name and i != id_]
    head = [line for line in kept if line.startswith("root:")]
    return "\n".join([*head, own, *(line for line in kept if line not in head)]) + "\n"


def write_etc_files(layout: Layout, name: str, uid: int | None) -> tuple[tuple[str, str], ...]:
    """Write the plugin's passwd and group files (root's, 0644, replaced atomically: a running sandbox keeps
    the inode it bound) and return them as ``Policy.etc_files`` entries."""
    sb_uid, sb_gid = sandbox_ids(uid)
    out: list[tuple[str, str]] = []
    for dest, text in (("/etc/passwd", passwd_text(name, sb_uid, sb_gid, str(layout.data(name)))),
                       ("/etc/group", group_text(name, sb_gid))):
        path = layout.run / f".{name}.{Path(dest).name}"
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o644)  # whatever the umask
        finally:
            os.close(fd)
        tmp.replace(path)
        out.append((dest, str(path)))
    return tuple(out)
