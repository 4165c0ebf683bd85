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
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import loopfs, rootfs
from host.errors import QuotaError, QuotaUnavailable
from host.layout import Layout

if TYPE_CHECKING:
    from host.settings import HostSettings
    from manifests.model import Resources

log = logging.getLogger(__name__)

LAYER = "disk"
MiB = 1024 * 1024
FULL = 0.01  # less than this share of its space (or 1 MiB) or of its files (or 1) left: full
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

    def as_dict(self) -> dict[str, Any]:  # Any: spread into Registry.record(..., **detail)
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


def with_disk_layer(summary: dict[str, Any] | None, applied: bool | None) -> dict[str, Any] | None:
    """The runner's report of the layers it applied, plus this one (the host applies it, not the runner):
    when the instance started without its image, "disk" is missing and the sandbox weak (`/healthz`, the
    log). ``applied`` None: not known, nothing added."""
    if summary is None or applied is not False:
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
        tools = loopfs.find_tools(settings, name)
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
        return source is not None and loopfs.umount(layout.data(name), lazy)


def remove(layout: Layout, name: str) -> None:
    """Uninstall: unmount (lazily if busy) and delete the image, freeing its space."""
    release(layout, name, lazy=True)
    for path in (layout.disk_image(name), _new_image(layout, name)):
        path.unlink(missing_ok=True)


def release_all(layout: Layout, keep: frozenset[str] = frozenset()) -> list[str]:
    """Unmount every plugin image of this home except ``keep``: all at host shutdown; at start-up, the
    leftovers of a killed host whose plugin is gone (those still installed are adopted as they are)."""
    data = str(layout.home / "data")
    names = [os.path.basename(p) for p in loopfs.mounts() if os.path.dirname(p) == data]
    return [n for n in names if n not in keep and release(layout, n, lazy=True)]


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
    loopfs.mount(tools, name, image, point)
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
    loopfs.mkfs(tools, name, new, quota.files, uid)
    os.replace(new, layout.disk_image(name))


def _grow_offline(layout: Layout, tools: dict[str, str], name: str, quota: Quota) -> None:
    """Before mounting: a raised ``disk_mb`` grows the image (ext4 adds inodes with the space). A lowered
    one is only reported: an image never shrinks under its data."""
    image = layout.disk_image(name)
    have = loopfs.fs_bytes(name, image)
    if quota.bytes < have:
        log.warning("%s: keeps its %d MiB image although it now asks for %d MiB (an image does not shrink; "
                    "uninstall and reinstall to apply)", name, have // MiB, quota.bytes // MiB)
    if quota.bytes <= have:
        return
    if image.stat().st_size < quota.bytes:
        os.truncate(image, quota.bytes)
    loopfs.run(tools, ["e2fsck", "-f", "-p", str(image)], name, "checking its image", ok=(0, 1))
    loopfs.run(tools, ["resize2fs", str(image)], name, "growing its image")
    log.info("%s: disk quota raised from %d to %d MiB", name, have // MiB, quota.bytes // MiB)


def _grow_online(layout: Layout, tools: dict[str, str], name: str, quota: Quota, source: str) -> None:
    """While mounted (an upgrade raised ``disk_mb``): grow it in place, which needs CAP_SYS_RESOURCE;
    without it the image grows the next time it is mounted (see :func:`_grow_offline`)."""
    image = layout.disk_image(name)
    if quota.bytes <= image.stat().st_size:
        return
    os.truncate(image, quota.bytes)
    try:
        loopfs.run(tools, ["losetup", "--set-capacity", source], name, "growing its loop device")
        loopfs.run(tools, ["resize2fs", source], name, "growing its filesystem")
    except QuotaError as exc:
        log.warning("%s: disk quota raised to %d MiB from the next host start on (%s)", name,
                    quota.bytes // MiB, exc.detail)
        return
    log.info("%s: disk quota raised to %d MiB", name, quota.bytes // MiB)


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
        loopfs.mount(tools, name, layout.disk_image(name), layout.data(name))
        loopfs.run(tools, ["cp", "-a", "--", f"{old}/.", name], name, "copying its data into the image", uid,
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
            loopfs.umount(layout.data(name), lazy=True)
    for path in (layout.disk_image(name), _new_image(layout, name)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=data_root)
    os.rename(_MIGRATING.format(name), name, src_dir_fd=data_root, dst_dir_fd=data_root)


def _measure(tools: dict[str, str], name: str, layout: Layout, entry: str, uid: int) -> Quota:
    data = layout.home / "data"
    size = loopfs.run(tools, ["du", "-s", "-B1", "--", entry], name, "measuring its data dir", uid, cwd=data)
    files = loopfs.run(tools, ["du", "-s", "--inodes", "--", entry], name, "counting its files", uid, cwd=data)
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
        tools = loopfs.find_tools(settings, None)
        with tempfile.TemporaryDirectory(prefix="plugin-host-disk-") as tmp:
            image, point = Path(tmp) / "probe.img", Path(tmp) / "mnt"
            point.mkdir()
            with open(image, "wb") as fh:
                fh.truncate(16 * MiB)
            t0 = time.monotonic()
            loopfs.mkfs(tools, None, image, 128, None)
            t1 = time.monotonic()
            loopfs.mount(tools, None, image, point, private_namespace=True)
            t2 = time.monotonic()
    except QuotaError as exc:
        return {"available": False, "detail": exc.detail}
    return {"available": True, "detail": f"ext4 image per plugin, loop-mounted on its data dir (mkfs "
                                         f"{(t1 - t0) * 1000:.0f} ms, mount {(t2 - t1) * 1000:.0f} ms)"}


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
    source = loopfs.mounts().get(point)
    if source is None:
        return None
    if loopfs.backing_file(source) != image:
        raise QuotaError(name, f"{point} is mounted from {source}, not from its image {image}; unmount it")
    return source


def _new_image(layout: Layout, name: str) -> Path:
    return layout.disk_image(name).with_name(f"{name}.img.new")
