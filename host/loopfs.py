"""Loop-mounted ext4 images, the mechanism under host.quota: find the tools, run them, read the mount table
and a superblock, unmount. Knows nothing of plugins beyond the name its errors carry. Root only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from host.errors import QuotaError, QuotaUnavailable

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)

TOOLS = ("mkfs.ext4", "e2fsck", "resize2fs", "mount", "losetup", "unshare", "cp", "du")
# nosuid/nodev: the image is the plugin's to fill; errors=remount-ro: if the host's own disk runs out under
# the sparse image, the plugin's writes stop instead of corrupting its data.
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,errors=remount-ro"
# 256-byte inodes (128-byte ones end in 2038); no blocks reserved for root (the plugin gets them all). A
# fresh sparse file reads as zeros, so mkfs need not write the journal and inode tables: a 512 MiB image
# costs ~0.4 MiB of host disk until the plugin writes.
MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-I", "256")
MKFS_EXTENDED = "nodiscard,lazy_itable_init=1,lazy_journal_init=1"
TOOL_TIMEOUT = 300.0
_UMOUNT_NOFOLLOW = 8
_MNT_DETACH = 2


def find_tools(settings: HostSettings, name: str | None) -> dict[str, str]:
    if os.geteuid() != 0:
        raise QuotaUnavailable(name, "needs a root host to loop-mount a filesystem image per plugin")
    if not os.path.exists("/dev/loop-control"):
        raise QuotaUnavailable(name, "no loop devices (/dev/loop-control is missing; in a container, pass "
                                     "--device /dev/loop-control and some /dev/loopN)")
    found = {t: shutil.which(t, path=settings.disk_tools_path) for t in TOOLS}
    missing = [t for t, path in found.items() if path is None]
    if missing:
        raise QuotaUnavailable(name, f"{', '.join(missing)} not found in {settings.disk_tools_path} "
                                     "(install e2fsprogs and util-linux, or set HOST_DISK_TOOLS_PATH)")
    return {t: str(path) for t, path in found.items()}


def run(tools: dict[str, str], argv: list[str], name: str | None, what: str, uid: int | None = None,
         ok: tuple[int, ...] = (0,), cwd: Path = Path("/")) -> str:
    """Run a tool (as ``uid`` when given: for reading or copying what the plugin wrote). The child enters
    ``cwd`` before it drops to ``uid``, so paths relative to it work even below directories (a 0700 home's
    parent) the plugin's uid could not traverse."""
    cmd = [tools.get(argv[0], argv[0]), *argv[1:]]
    as_user = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=TOOL_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL, cwd=cwd, env={"PATH": "/usr/bin:/bin",
                              "LANG": "C"}, **as_user)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QuotaError(name, f"{what}: {exc}") from exc
    if proc.returncode not in ok:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise QuotaError(name, f"{what}: {lines[-1] if lines else f'{argv[0]} exited with {proc.returncode}'}")
    return str(proc.stdout)


def mounts() -> dict[str, str]:
    """{mount point: source} in this mount namespace; where mounts are stacked, the top one."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                sep = fields.index("-", 6)
                out[unescape(fields[4])] = unescape(fields[sep + 2])
    return out


def unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def backing_file(source: str) -> str | None:
    if not re.fullmatch(r"/dev/loop[0-9]+", source):
        return None
    try:
        with open(f"/sys/block/{os.path.basename(source)}/loop/backing_file", encoding="utf-8") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def umount(point: Path, lazy: bool) -> bool:
    umount2 = ctypes.CDLL(None, use_errno=True).umount2
    target = os.fsencode(point)
    if umount2(target, _UMOUNT_NOFOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EBUSY and lazy and umount2(target, _UMOUNT_NOFOLLOW | _MNT_DETACH) == 0:
        log.info("%s was still in use: detached; its loop device goes when the last user does", point)
        return True
    log.warning("cannot unmount %s: %s", point, os.strerror(err))
    return False


def mkfs(tools: dict[str, str], name: str | None, image: Path, inodes: int, owner: int | None) -> None:
    """An ext4 filesystem filling the (sparse) file ``image``, with ``inodes`` inodes; its root owned by
    ``owner`` when given."""
    extended = MKFS_EXTENDED + (f",root_owner={owner}:{owner}" if owner is not None else "")
    run(tools, ["mkfs.ext4", *MKFS_OPTIONS, "-N", str(inodes), "-E", extended, str(image)], name,
        "creating its image")


def mount(tools: dict[str, str], name: str | None, image: Path, point: Path, private_namespace: bool = False) -> None:
    """Loop-mount ``image`` on ``point`` (mount(8) reuses a loop device already attached to it). With
    ``private_namespace``, in a new mount namespace made private before anything is mounted, which takes
    the mount (and the loop device) along when the command exits: for probing."""
    argv = ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(point)]
    if private_namespace:
        argv = ["unshare", "--mount", "--propagation", "private", tools["mount"], *argv[1:]]
    run(tools, argv, name, "mounting its image")


def detach(point: str) -> bool:
    """Lazy unmount (MNT_DETACH): gone from this namespace at once, freed when its last user lets go."""
    return bool(ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(point), _UMOUNT_NOFOLLOW | _MNT_DETACH) == 0)


def fs_bytes(name: str, image: Path) -> int:
    """The size of the (unmounted) ext4 filesystem in ``image``, from its superblock (root wrote it all)."""
    with open(image, "rb") as fh:
        fh.seek(1024)
        sb = fh.read(1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        raise QuotaError(name, f"{image} holds no ext4 filesystem")
    lo, log_block, incompat, hi = (struct.unpack_from("<I", sb, off)[0] for off in (0x4, 0x18, 0x60, 0x150))
    blocks = lo | (hi << 32 if incompat & 0x80 else 0)  # INCOMPAT_64BIT
    return int(blocks * (1024 << log_block))


def drop_copies() -> int:
    """In a process's own private mount namespace (the web tier's), which copied the host's mount table
    when it was made: unmount its copies of plugin disk images, of this home and of any other on the
    machine. It never needs them, and a private copy keeps an unmounted or uninstalled image (its space
    and its loop device) alive as long as the process runs. An image is a loop mount whose backing file is
    ``<mount point>.img``. Does nothing in the parent's (the host's) namespace. Returns how many."""
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
            return 0
    except OSError:
        return 0
    return sum(detach(point) for point, source in mounts().items()
               if backing_file(source) == f"{point}.img")
