"""Which unprivileged uid/gid the web tier runs as, and how the few host files it needs are shared with it.

A root host runs its internet-facing web tier as its own user, never root. The web tier reaches exactly
these host files, all root-owned with group = the web user's gid: the routing snapshot (``run/routes.json``,
0640), the supervisor's web socket (``run/web.sock``, 0660) and each plugin's socket directory
(``run/<name>/``, 0710) with the sockets in it (0660). Not the registry, the control socket, logs or data.
A non-root host runs the web tier as itself (it owns every file already), so nothing is shared.

By default each home's web tier gets a uid of its own from the machine-wide allocation file that also
hands out plugin uids (host.uids), recorded there as the home's ``@web``: no plugin of any home and no web
tier of another home ever shares it (a shared uid would let one host's compromised web tier connect to
another host's plugin sockets or signal its web tier).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from host.errors import HostError
from host.uids import UidFile

if TYPE_CHECKING:
    from host.settings import HostSettings

DEFAULT_NAME = "plugin-host-web"
# The web tier's entry in the uid allocation file (plugin names start with a letter: never this).
ALLOCATION_NAME = "@web"


@dataclass(frozen=True)
class WebUser:
    uid: int
    gid: int


def web_user(settings: HostSettings) -> WebUser | None:
    """The web tier's uid/gid on a root host (from ``HOST_WEB_USER``); None when the host is not root."""
    spec = settings.web_user
    if os.geteuid() != 0:
        if spec:
            raise HostError(f"HOST_WEB_USER={spec}: only a host running as root can switch the web tier's "
                            "user; unset it (the web tier runs as the host's own user)")
        return None
    if not spec:
        try:
            pw = pwd.getpwnam(DEFAULT_NAME)
        except KeyError:
            # From the plugins' allocation: unique on this machine, owns no file, needs no passwd entry.
            uid = UidFile(settings.uid_file).claim(settings.home_dir, ALLOCATION_NAME, settings.uid_base)
            return WebUser(uid, uid)
        user = WebUser(pw.pw_uid, pw.pw_gid)
    elif spec[0].isdigit():
        uid_text, _, gid_text = spec.partition(":")
        user = WebUser(int(uid_text), int(gid_text or uid_text))
    else:
        try:
            pw = pwd.getpwnam(spec)
        except KeyError as exc:
            raise HostError(f"HOST_WEB_USER={spec}: no such user; create it or give a uid[:gid]") from exc
        user = WebUser(pw.pw_uid, pw.pw_gid)
    if 0 in (user.uid, user.gid):
        raise HostError(f"HOST_WEB_USER={spec or DEFAULT_NAME}: uid/gid 0; the web tier never runs as root")
    if max(user.uid, user.gid) >= settings.uid_base:
        raise HostError(f"HOST_WEB_USER={spec or DEFAULT_NAME} ({user.uid}:{user.gid}) is inside the plugins' "
                        f"uid range (HOST_UID_BASE={settings.uid_base}); choose an id below it")
    return user


def share_fd(fd: int, user: WebUser | None, mode: int) -> None:
    """root:<web gid> with ``mode`` (the group bits are the web tier's); owner-only when there is no web user."""
    if user is not None:
        os.fchown(fd, 0, user.gid)
    os.fchmod(fd, mode if user is not None else mode & 0o700)


def share_path(path: Path, user: WebUser | None, mode: int) -> None:
    """:func:`share_fd` for what has no usable fd (a socket file). Only for paths in root-only directories."""
    if user is not None:
        os.chown(path, 0, user.gid, follow_symlinks=False)
    os.chmod(path, mode if user is not None else mode & 0o700)
