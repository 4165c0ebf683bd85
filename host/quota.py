"""Per-plugin disk and inode quota: an ext4 image per plugin, loop-mounted by root on its data dir.

``<home>/data/<name>.img`` (sparse, root 0600, never visible to the plugin, so only the kernel ever writes
its metadata) holds everything the plugin can write: its data dir, its TMPDIR (``data/<name>/.tmp``) and
gunicorn's worker tmp dir. When ``resources.disk_mb`` or ``resources.files`` is used up, the kernel answers
ENOSPC inside; the host's own disk does not fill.

Lifecycle: mounted in the host's mount namespace before the plugin's first instance (or its install-time
check) starts, and kept while the plugin is installed and the host runs, so the old and the new instance
of a zero-downtime restart share it (each sandbox bind-mounts the data dir). Unmounted at host shutdown
and at uninstall, which deletes the image unless --keep-data. mount(8) attaches the loop device with
autoclear and reuses the device already attached to an image, so a mount left by a SIGKILLed host (adopted
as it is) or one a dying sandbox still holds is never mounted a second time through another device, which
would corrupt it; a loop device disappears with its last mount.

Imports neither the supervisor nor the web tier. Creates no mount namespace except the probe's, which is
made private before it mounts anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import rootfs
from host.errors import QuotaError, QuotaUnavailable
from host.layout import Layout
from host.settings import HostSettings
from manifests.model import Resources

log = logging.getLogger(__name__)

LAYER = "disk"
MiB = 1024 * 1024
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
FULL = 0.01  # less than this share of its space (or 1 MiB) or of its files (or 1) left: full
_UMOUNT_NOFOLLOW = 8
_MNT_DETACH = 2
_MIGRATING, _MIGRATED = ".{}.premigration", ".{}.migrated"


@dataclass(frozen=True)
class Quota:
    """What a manifest grants: bytes and files (inodes) for the data dir."""

    bytes: int
    files: int

    @classmethod
    def of(cls, res: Resources) -> Quota:
        return cls(res.disk_mb * MiB, res.files)


@dataclass(frozen=True)
class Usage:
    """What a mounted image holds (its usable size: the image minus ext4's metadata and journal)."""

    used_bytes: int
    size_bytes: int
    used_files: int
    max_files: int

    @property
    def full(self) -> bool:
        return (self.size_bytes - self.used_bytes < max(MiB, FULL * self.size_bytes)
                or self.max_files - self.used_files < max(1.0, FULL * self.max_files))

    def describe(self) -> str:
        return (f"{self.used_bytes / MiB:.1f} of {self.size_bytes / MiB:.1f} MiB, "
                f"{self.used_files} of {self.max_files} files")

    def as_dict(self) -> dict[str, object]:
        return {"used_mb": round(self.used_bytes / MiB, 1), "size_mb": round(self.size_bytes / MiB, 1),
                "files": self.used_files, "max_files": self.max_files, "full": self.full}


def disk_usage(layout: Layout, name: str) -> Usage | None:
    """The plugin's disk use, or None when nothing is mounted on its data dir (no quota, or not serving)."""
    point = layout.data(name)
    try:
        if os.stat(point).st_dev == os.stat(point.parent).st_dev:
            return None
        st = os.statvfs(point)
    except OSError:
        return None
    return Usage((st.f_blocks - st.f_bavail) * st.f_frsize, st.f_blocks * st.f_frsize,
                 st.f_files - st.f_ffree, st.f_files)


def usage_cell(use: Usage | None) -> str:
    """For `host list`: "3.1/14.6M 20/496 files" ("FULL ..." when full), or "-" when no image is mounted."""
    if use is None:
        return "-"
    return (f"{'FULL ' if use.full else ''}{use.used_bytes / MiB:.1f}/{use.size_bytes / MiB:.1f}M "
            f"{use.used_files}/{use.max_files} files")


def with_disk_layer(summary: dict[str, Any] | None, layout: Layout, name: str) -> dict[str, Any] | None:
    """The runner's report of the layers it applied, plus this one (the host applies it, not the runner):
    with no image mounted on the data dir, "disk" is missing and the sandbox weak (`/healthz`, the log)."""
    if summary is None or disk_usage(layout, name) is not None:
        return summary
    return {**summary, "level": "weak", "missing": sorted({*summary.get("missing", []), LAYER})}


class FullAlarm:
    """Edge-triggered: one message when a data dir fills up, one when it has room again."""

    def __init__(self) -> None:
        self.full = False

    def update(self, use: Usage | None) -> str | None:
        full = use is not None and use.full
        if full == self.full:
            return None
        self.full = full
        if use is not None and full:
            return f"data dir is full ({use.describe()}): its writes fail with ENOSPC"
        return "data dir has room again"


# -- mounting ------------------------------------------------------------------------------------------------


def ensure_mounted(settings: HostSettings, name: str, quota: Quota, uid: int | None) -> Usage | None:
    """Mount the plugin's image on its data dir, creating it (or moving a pre-quota data dir into it, or
    growing it to a raised quota) first. Idempotent and cheap once mounted.

    Returns the usage, or None when the plugin runs without a quota: on a non-root host (which cannot
    mount; like the uid and cgroup layers this one is root-only) or, with HOST_SANDBOX=weak, when this
    machine cannot enforce it (logged). With HOST_SANDBOX=strict that raises QuotaError instead.
    """
    layout = Layout(settings.home_dir)
    if uid is None:
        return None
    try:
        tools = _tools(settings, name)
        with _locked(layout) as data_root:
            _finish_migration(layout, name, data_root)
            _mount(layout, tools, name, quota, uid, data_root)
    except (QuotaError, OSError) as exc:
        err = exc if isinstance(exc, QuotaError) else QuotaError(name, str(exc))
        if settings.sandbox != "strict":
            log.warning("%s: running WITHOUT a disk quota (HOST_SANDBOX=weak): %s", name, err.detail)
            return None
        if isinstance(err, QuotaUnavailable):
            raise QuotaUnavailable(name, f"{err.detail}; HOST_SANDBOX=weak starts plugins without one") from exc
        if err is exc:
            raise
        raise err from exc
    return disk_usage(layout, name)


def refusal(exc: QuotaError) -> str:
    """Why a plugin does not start, in one line (the quarantine reason)."""
    return f"{exc.prefix}: {exc.detail}"


def release(layout: Layout, name: str, *, lazy: bool) -> bool:
    """Unmount the plugin's image (its loop device goes with the last mount). True when unmounted;
    False when nothing of ours was mounted, or it is busy and not ``lazy`` (then it stays mounted)."""
    with _locked(layout):
        try:
            source = _mounted(layout, name)
        except QuotaError:
            return False  # someone else's mount: not ours to remove
        return source is not None and _umount(layout.data(name), lazy)


def remove(layout: Layout, name: str) -> None:
    """Uninstall: unmount (lazily if busy) and delete the image, freeing its space."""
    release(layout, name, lazy=True)
    for path in (layout.disk_image(name), _new_image(layout, name)):
        path.unlink(missing_ok=True)


def release_all(layout: Layout, keep: frozenset[str] = frozenset()) -> list[str]:
    """Unmount every plugin image of this home except ``keep``: all at host shutdown; at start-up, the
    leftovers of a killed host whose plugin is gone (those still installed are adopted as they are)."""
    data = str(layout.home / "data")
    names = [os.path.basename(p) for p in _mounts() if os.path.dirname(p) == data]
    return [n for n in names if n not in keep and release(layout, n, lazy=True)]


def drop_copies(layout: Layout) -> int:
    """In a process's own mount namespace (the web tier's, which copied the host's mount table when it was
    made): unmount its copies of the plugins' images, which it never needs and which would otherwise keep
    an unmounted or uninstalled image, and its loop device, alive as long as it runs. Does nothing in the
    parent's (the host's) namespace, where that would unmount them for the plugins. Returns how many."""
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
            return 0
    except OSError:
        return 0
    data, dropped = str(layout.home / "data"), 0
    umount2 = ctypes.CDLL(None, use_errno=True).umount2
    for point in (p for p in _mounts() if os.path.dirname(p) == data):
        dropped += umount2(os.fsencode(point), _UMOUNT_NOFOLLOW | _MNT_DETACH) == 0
    return dropped


def _mount(layout: Layout, tools: dict[str, str], name: str, quota: Quota, uid: int, data_root: int) -> None:
    point, image = layout.data(name), layout.disk_image(name)
    source = _mounted(layout, name)
    if source is not None:
        _grow_online(layout, tools, name, quota, source)
        return
    fresh = not image.exists()
    if _prepare_point(data_root, name):
        if not fresh:
            raise QuotaError(name, f"{point} holds files although its image {image} exists; move them into "
                                   "the image (mount it there) or aside, then start the plugin again")
        _migrate(layout, tools, name, quota, uid, data_root)
        return
    if fresh:
        _create(layout, tools, name, quota, uid)
        log.info("%s: disk quota %d MiB / %d files (%s)", name, quota.bytes // MiB, quota.files, image)
    else:
        _grow_offline(layout, tools, name, quota)
    _run(tools, ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(point)], name, "mounting its image")
    use = disk_usage(layout, name)
    if use is not None and quota.files > use.max_files * 1.05:
        log.warning("%s: its image has %d inodes although it now asks for %d files (reinstall to apply)",
                    name, use.max_files, quota.files)


def _prepare_point(data_root: int, name: str) -> bool:
    """Make the mount point a root-owned 0700 directory, so that while nothing is mounted on it nothing
    the plugin runs could write there. True when it still holds data from before quotas (to migrate)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=data_root)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=data_root)
    except OSError as exc:
        raise QuotaError(name, f"data dir is not a directory: {exc}") from exc
    try:
        entries = set(os.listdir(fd))
        if entries == {".tmp"}:
            with contextlib.suppress(OSError):  # an empty TMPDIR is no data; a non-empty one is migrated
                os.rmdir(".tmp", dir_fd=fd)
                entries.clear()
        if entries:
            return True
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o700)
        return False
    finally:
        os.close(fd)


def _create(layout: Layout, tools: dict[str, str], name: str, quota: Quota, uid: int) -> None:
    """A sparse image of ``quota.bytes`` with ``quota.files`` inodes, its root owned by the plugin."""
    new = _new_image(layout, name)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, quota.bytes)
    finally:
        os.close(fd)
    _run(tools, ["mkfs.ext4", *MKFS_OPTIONS, "-N", str(quota.files), "-E",
                 f"{MKFS_EXTENDED},root_owner={uid}:{uid}", str(new)], name, "creating its image")
    os.replace(new, layout.disk_image(name))


def _grow_offline(layout: Layout, tools: dict[str, str], name: str, quota: Quota) -> None:
    """Before mounting: a raised ``disk_mb`` grows the image (ext4 adds inodes with the space). A lowered
    one is only reported: an image never shrinks under its data."""
    image = layout.disk_image(name)
    have = _fs_bytes(name, image)
    if quota.bytes < have:
        log.warning("%s: keeps its %d MiB image although it now asks for %d MiB (an image does not shrink; "
                    "uninstall and reinstall to apply)", name, have // MiB, quota.bytes // MiB)
    if quota.bytes <= have:
        return
    if image.stat().st_size < quota.bytes:
        os.truncate(image, quota.bytes)
    _run(tools, ["e2fsck", "-f", "-p", str(image)], name, "checking its image", ok=(0, 1))
    _run(tools, ["resize2fs", str(image)], name, "growing its image")
    log.info("%s: disk quota raised from %d to %d MiB", name, have // MiB, quota.bytes // MiB)


def _grow_online(layout: Layout, tools: dict[str, str], name: str, quota: Quota, source: str) -> None:
    """While mounted (an upgrade raised ``disk_mb``): grow it in place, which needs CAP_SYS_RESOURCE;
    without it the image grows the next time it is mounted (see :func:`_grow_offline`)."""
    image = layout.disk_image(name)
    if quota.bytes <= image.stat().st_size:
        return
    os.truncate(image, quota.bytes)
    try:
        _run(tools, ["losetup", "--set-capacity", source], name, "growing its loop device")
        _run(tools, ["resize2fs", source], name, "growing its filesystem")
    except QuotaError as exc:
        log.warning("%s: disk quota raised to %d MiB from the next host start on (%s)", name,
                    quota.bytes // MiB, exc.detail)
        return
    log.info("%s: disk quota raised to %d MiB", name, quota.bytes // MiB)


def _fs_bytes(name: str, image: Path) -> int:
    """The size of the (unmounted) ext4 filesystem in ``image``, from its superblock (root wrote it all)."""
    with open(image, "rb") as fh:
        fh.seek(1024)
        sb = fh.read(1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        raise QuotaError(name, f"{image} holds no ext4 filesystem")
    lo, log_block, incompat, hi = (struct.unpack_from("<I", sb, off)[0] for off in (0x4, 0x18, 0x60, 0x150))
    blocks = lo | (hi << 32 if incompat & 0x80 else 0)  # INCOMPAT_64BIT
    return int(blocks * (1024 << log_block))


# -- migrating a data dir from before quotas ----------------------------------------------------------------


def _migrate(layout: Layout, tools: dict[str, str], name: str, quota: Quota, uid: int, data_root: int) -> None:
    """Copy a pre-quota data dir into a new image, as the plugin's uid (root never follows what the plugin
    planted there). The image is big enough for what is there plus room to grow, so no plugin loses its
    data or stops working; the original is deleted only once the copy is complete."""
    old = _MIGRATING.format(name)
    os.rename(name, old, src_dir_fd=data_root, dst_dir_fd=data_root)
    try:
        os.mkdir(name, 0o700, dir_fd=data_root)
        used = _measure(tools, name, layout, old, uid)
        # A quarter more than what is there covers ext4's own overhead and leaves room to grow.
        fit = Quota(max(quota.bytes, _round_mib(used.bytes * 5 // 4)), max(quota.files, used.files * 5 // 4 + 16))
        _create(layout, tools, name, fit, uid)
        _run(tools, ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(layout.disk_image(name)),
                     str(layout.data(name))], name, "mounting its image")
        _run(tools, ["cp", "-a", "--", f"{old}/.", name], name, "copying its data into the image", uid,
             cwd=layout.home / "data")
        os.rename(old, _MIGRATED.format(name), src_dir_fd=data_root, dst_dir_fd=data_root)
    except BaseException:
        _undo_migration(layout, name, data_root)
        raise
    log.warning("%s: moved its data dir (%d MiB, %d files) into a disk quota image of %d MiB / %d files",
                name, used.bytes // MiB, used.files, fit.bytes // MiB, fit.files)
    _finish_migration(layout, name, data_root)


def _finish_migration(layout: Layout, name: str, data_root: int) -> None:
    """Complete what a killed host left: a finished copy's original is deleted; an unfinished copy is
    thrown away and the original put back (then migrated again)."""
    rootfs.remove_at(data_root, _MIGRATED.format(name))  # by descriptor: follows no symlink planted in it
    with contextlib.suppress(FileNotFoundError):
        os.stat(_MIGRATING.format(name), dir_fd=data_root, follow_symlinks=False)
        _undo_migration(layout, name, data_root)


def _undo_migration(layout: Layout, name: str, data_root: int) -> None:
    with contextlib.suppress(QuotaError):
        if _mounted(layout, name) is not None:
            _umount(layout.data(name), lazy=True)
    for path in (layout.disk_image(name), _new_image(layout, name)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=data_root)
    os.rename(_MIGRATING.format(name), name, src_dir_fd=data_root, dst_dir_fd=data_root)


def _measure(tools: dict[str, str], name: str, layout: Layout, entry: str, uid: int) -> Quota:
    data = layout.home / "data"
    size = _run(tools, ["du", "-s", "-B1", "--", entry], name, "measuring its data dir", uid, cwd=data)
    files = _run(tools, ["du", "-s", "--inodes", "--", entry], name, "counting its files", uid, cwd=data)
    try:
        return Quota(int(size.split()[0]), int(files.split()[0]))
    except (IndexError, ValueError) as exc:
        raise QuotaError(name, f"cannot measure its data dir: du said {size!r} {files!r}") from exc


def _round_mib(n: int) -> int:
    return -(-n // MiB) * MiB


# -- the machine --------------------------------------------------------------------------------------------


def probe_disk(settings: HostSettings) -> dict[str, object]:
    """For `host doctor`: whether this machine can enforce the disk layer, by mounting a small image in a
    private mount namespace of its own (which, and whose loop device, vanish when the probe exits)."""
    try:
        tools = _tools(settings, None)
        with tempfile.TemporaryDirectory(prefix="plugin-host-disk-") as tmp:
            image, point = Path(tmp) / "probe.img", Path(tmp) / "mnt"
            point.mkdir()
            with open(image, "wb") as fh:
                fh.truncate(16 * MiB)
            t0 = time.monotonic()
            _run(tools, ["mkfs.ext4", *MKFS_OPTIONS, "-N", "128", "-E", MKFS_EXTENDED, str(image)], None,
                 "creating a test image")
            t1 = time.monotonic()
            _run(tools, ["unshare", "--mount", "--propagation", "private", tools["mount"], "-t", "ext4",
                         "-o", MOUNT_OPTIONS, str(image), str(point)], None, "mounting a test image")
            t2 = time.monotonic()
    except QuotaError as exc:
        return {"available": False, "detail": exc.detail}
    return {"available": True, "detail": f"ext4 image per plugin, loop-mounted on its data dir (mkfs "
                                         f"{(t1 - t0) * 1000:.0f} ms, mount {(t2 - t1) * 1000:.0f} ms)"}


def _tools(settings: HostSettings, name: str | None) -> dict[str, str]:
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


def _run(tools: dict[str, str], argv: list[str], name: str | None, what: str, uid: int | None = None,
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


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[int]:
    """Serialise mounting between the supervisor and the CLI (install, uninstall): an fd of <home>/data,
    flocked. Plugins cannot take it: the directory is root-owned 0711, not readable by them."""
    fd = os.open(layout.home / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _mounted(layout: Layout, name: str) -> str | None:
    """The loop device that mounts the plugin's image on its data dir; None when nothing is mounted there;
    QuotaError when something else is."""
    point, image = str(layout.data(name)), str(layout.disk_image(name))
    source = _mounts().get(point)
    if source is None:
        return None
    if _backing_file(source) != image:
        raise QuotaError(name, f"{point} is mounted from {source}, not from its image {image}; unmount it")
    return source


def _mounts() -> dict[str, str]:
    """{mount point: source} in this mount namespace; where mounts are stacked, the top one."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                sep = fields.index("-", 6)
                out[_unescape(fields[4])] = _unescape(fields[sep + 2])
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _backing_file(source: str) -> str | None:
    if not re.fullmatch(r"/dev/loop[0-9]+", source):
        return None
    try:
        with open(f"/sys/block/{os.path.basename(source)}/loop/backing_file", encoding="utf-8") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def _umount(point: Path, lazy: bool) -> bool:
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


def _new_image(layout: Layout, name: str) -> Path:
    return layout.disk_image(name).with_name(f"{name}.img.new")
