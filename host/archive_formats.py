"""The readers behind host.archive: each zip or tar member judged (name, type, size) and written beneath a
directory fd without following links, its real bytes counted. Imports nothing from the host but rootfs, errors
and terminal; host.archive is the interface (scratch directories, the bundle root).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import IO, Any, BinaryIO

from host import rootfs
from host.archive_limits import Limits, mib
from host.errors import ArchiveError
from host.terminal import printable

CHUNK = 1 << 20  # what one read of a member asks for: the memory one extraction holds at most, about
EXT_HEADER_MAX = 1 << 20  # a pax / GNU long-name header's size: tarfile reads it whole into memory
ZIP_CD_PER_MEMBER = 512  # central directory bytes allowed per allowed member (zipfile reads it whole)
SKIPPED_TOP = frozenset({"__MACOSX"})  # macOS Finder's resource-fork shadows: never part of a plugin


class Writer:
    """Checks every member's name, type and size, and writes it beneath the root fd without following links."""

    def __init__(self, archive: str, root: int, limits: Limits) -> None:
        self.archive = archive
        self.root = root
        self.limits = limits
        self.members = 0
        self.files = 0
        self.total = 0
        self.seen: dict[PurePosixPath, bool] = {}  # path -> is a directory (explicit or implied)

    def refuse(self, member: str | None, reason: str) -> ArchiveError:
        return ArchiveError(self.archive, member, reason)

    def admit(self, raw: str, *, is_dir: bool, declared: int) -> PurePosixPath | None:
        """Check one member before anything of it is written; its path, or None to skip it quietly."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(raw, f"more than {self.limits.max_members} members")
        path = self.path(raw)
        if path is None:
            return None
        if not is_dir:
            if declared > self.limits.max_member_bytes:
                raise self.refuse(raw, f"{declared} bytes, over the {mib(self.limits.max_member_bytes)} limit "
                                       "for one file")
            if self.total + declared > self.limits.max_total_bytes:
                raise self.refuse(raw, f"the files add up to more than {mib(self.limits.max_total_bytes)}")
        if path in self.seen and (not is_dir or not self.seen[path]):
            what = "a file" if not self.seen[path] else "a directory"
            raise self.refuse(raw, f"a duplicate member ({path} is already {what} in the archive)")
        for parent in path.parents:
            if parent.parts and self.seen.get(parent) is False:
                raise self.refuse(raw, f"its parent {parent} is a file in the archive")
        return path

    def path(self, raw: str) -> PurePosixPath | None:
        """The member's name as a safe relative path; None for the archive root itself ('./')."""
        if "\\" in raw:
            raise self.refuse(raw, "a backslash in its name (a Windows path, or an escape attempt)")
        if raw.startswith("/"):
            raise self.refuse(raw, "an absolute path")
        if len(raw) >= 2 and raw[1] == ":" and raw[0].isalpha():
            raise self.refuse(raw, "a drive letter (a Windows absolute path)")
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in raw):
            raise self.refuse(raw, "a control character in its name")
        try:
            encoded = raw.encode()
        except UnicodeEncodeError:
            raise self.refuse(raw, "a name that is not UTF-8") from None
        if len(encoded) > self.limits.max_path_bytes:
            raise self.refuse(raw[:80] + "...", f"a name longer than {self.limits.max_path_bytes} bytes")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(raw, "'..' in its path (it would land outside the plugin)")
        if not parts:
            return None
        if parts[0] in SKIPPED_TOP:
            return None
        if len(parts) > self.limits.max_depth:
            raise self.refuse(raw, f"deeper than {self.limits.max_depth} directories")
        long = [p for p in parts if len(p.encode()) > self.limits.max_name_bytes]
        if long:
            raise self.refuse(raw, f"a path component longer than {self.limits.max_name_bytes} bytes")
        return PurePosixPath(*parts)

    def directory(self, path: PurePosixPath) -> None:
        self.seen[path] = True
        for parent in path.parents:
            if parent.parts:
                self.seen.setdefault(parent, True)
        os.close(self._dirs(str(path), path.parts))

    def file(self, raw: str, path: PurePosixPath, data: Callable[[int], bytes], declared: int,
             executable: bool) -> None:
        """Write the member's bytes from ``data(n)``, counting what really arrives against the limits."""
        self.seen[path] = False
        for above in path.parents:
            if above.parts:
                self.seen.setdefault(above, True)
        parent = self._dirs(raw, path.parts[:-1])
        try:
            try:
                out = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=parent)
            except FileExistsError:
                raise self.refuse(raw, "a duplicate member") from None
            try:
                written = 0
                cap = min(declared, self.limits.max_member_bytes)
                while chunk := data(CHUNK):
                    written += len(chunk)
                    if written > cap:
                        raise self.refuse(raw, f"more data than its header declares ({declared} bytes)"
                                          if written > declared else f"over the "
                                          f"{mib(self.limits.max_member_bytes)} limit for one file")
                    if self.total + written > self.limits.max_total_bytes:
                        raise self.refuse(raw, f"the files add up to more than {mib(self.limits.max_total_bytes)}")
                    _write_all(out, chunk)
                if written != declared:
                    raise self.refuse(raw, f"{written} bytes where its header declares {declared} (truncated)")
                os.fchmod(out, 0o755 if executable else 0o644)
            except OSError as exc:
                raise self.refuse(raw, f"cannot write it: {exc.strerror or exc}") from exc
            finally:
                os.close(out)
        finally:
            os.close(parent)
        self.files += 1
        self.total += written

    def _dirs(self, raw: str, parts: tuple[str, ...]) -> int:
        """An fd of directory ``parts`` beneath the root, creating each level (0755) without following links."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, rootfs.DIR_FLAGS, dir_fd=fd)  # ENOTDIR / ELOOP: never followed
                os.close(fd)
                fd = nxt
            return fd
        except OSError as exc:
            os.close(fd)
            raise self.refuse(raw, f"cannot create its directory: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(fd)
            raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ------------------------------------------------------------------------------------------------------- zip


def unzip(fh: BinaryIO, writer: Writer) -> None:
    """Every member is judged from the central directory before a byte is written; then each is written,
    its real bytes counted (zipfile also stops at the declared size and checks the CRC)."""
    _check_zip_directory(fh, writer)
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            plan: list[tuple[zipfile.ZipInfo, PurePosixPath, bool]] = []
            for info in infos:
                mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: Unix modes
                kind = stat.S_IFMT(mode)
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise writer.refuse(info.filename, _type_reason(kind, None))
                if info.flag_bits & 0x1:
                    raise writer.refuse(info.filename, "encrypted")
                is_dir = info.filename.endswith("/") or kind == stat.S_IFDIR
                if is_dir and info.file_size:
                    raise writer.refuse(info.filename, "a directory entry with content")
                path = writer.admit(info.filename, is_dir=is_dir, declared=info.file_size)
                if path is not None:
                    writer.seen[path] = is_dir  # so duplicates and file/dir clashes are found before writing
                    for parent in path.parents:
                        if parent.parts:
                            writer.seen.setdefault(parent, True)
                    plan.append((info, path, is_dir))
                    writer.total += 0 if is_dir else info.file_size  # the headers' sum, for admit's check
            writer.seen.clear()
            writer.total = 0
            for info, path, is_dir in plan:
                if is_dir:
                    writer.directory(path)
                    continue
                mode = info.external_attr >> 16 if info.create_system == 3 else 0
                try:
                    with zf.open(info) as member:
                        writer.file(info.filename, path, member.read, info.file_size, bool(mode & 0o111))
                except _ZIP_ERRORS as exc:
                    raise writer.refuse(info.filename, f"unreadable: {_why(exc)}") from exc
    except ArchiveError:
        raise
    except (*_ZIP_ERRORS, OSError) as exc:
        raise writer.refuse(None, f"not a readable zip archive: {_why(exc)}") from exc


# what zipfile raises for a damaged, encrypted or unsupported member
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


def _check_zip_directory(fh: BinaryIO, writer: Writer) -> None:
    """The end-of-central-directory record, read before zipfile loads the whole directory into memory."""
    limits = writer.limits
    size = fh.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise writer.refuse(None, "not a readable zip archive: no end-of-central-directory record")
    entries, cd_size = struct.unpack("<xxxxxxxxxxHI", tail[at:at + 16])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # ZIP64: the real numbers are in the ZIP64 end record
        loc = tail[at - 20:at] if at >= 20 else b""
        if loc[:4] != b"PK\x06\x07":
            raise writer.refuse(None, "not a readable zip archive: a broken ZIP64 end record")
        (offset,) = struct.unpack("<Q", loc[8:16])
        fh.seek(offset)
        rec = fh.read(56)
        if rec[:4] != b"PK\x06\x06" or len(rec) < 56:
            raise writer.refuse(None, "not a readable zip archive: a broken ZIP64 end record")
        entries, cd_size = struct.unpack("<QQ", rec[32:48])
    if entries > limits.max_members:
        raise writer.refuse(None, f"{entries} members, more than {limits.max_members}")
    if cd_size > limits.max_members * ZIP_CD_PER_MEMBER:
        raise writer.refuse(None, f"a central directory of {cd_size} bytes, more than "
                                  f"{limits.max_members * ZIP_CD_PER_MEMBER}")
    fh.seek(0)


# ------------------------------------------------------------------------------------------------------- tar


_EXT_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
              tarfile.SOLARIS_XHDTYPE)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a pax or GNU long-name header too large to read: tarfile reads one whole into memory."""

    def _proc_member(self, tf: Any) -> Any:  # tarfile's (private) per-header hook
        if self.type in _EXT_TYPES and self.size > EXT_HEADER_MAX:
            raise ArchiveError(None, self.name, f"an extended header of {self.size} bytes "
                               f"(over {mib(EXT_HEADER_MAX)})")
        return super()._proc_member(tf)  # type: ignore[misc]


class _Capped:
    """The decompressed stream, refused past ``cap`` bytes (a gzip bomb stops here even between members)."""

    def __init__(self, inner: IO[bytes], cap: int, writer: Writer) -> None:
        self.inner = inner
        self.cap = cap
        self.count = 0
        self.writer = writer

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n if n >= 0 else CHUNK)
        self.count += len(data)
        if self.count > self.cap:
            raise self.writer.refuse(None, f"expands to more than {mib(self.cap)}")
        return data


def untar(fh: BinaryIO, fmt: str, writer: Writer) -> None:
    """One pass over the stream: each member is judged by its header, then written while it is read."""
    inner: IO[bytes] = gzip.GzipFile(fileobj=fh, mode="rb") if fmt == "tar.gz" else fh  # type: ignore[assignment]
    stream = _Capped(inner, writer.limits.max_stream_bytes, writer)
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tf:  # type: ignore[call-overload]
            for member in tf:
                name = member.name
                if member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
                    raise writer.refuse(name, "a sparse file; archives may hold only regular files and directories")
                if member.isdir():
                    path = writer.admit(name, is_dir=True, declared=0)
                    if path is not None:
                        writer.directory(path)
                    continue
                if not member.isreg():
                    raise writer.refuse(name, _type_reason(None, member))
                path = writer.admit(name, is_dir=False, declared=member.size)
                if path is None:
                    continue
                data = tf.extractfile(member)
                assert data is not None  # a regular file always has data
                writer.file(name, path, data.read, member.size, bool(member.mode & 0o111))
    except ArchiveError as exc:
        if exc.archive is None:  # raised inside tarfile's header parsing
            raise writer.refuse(exc.member, exc.reason) from exc
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError, UnicodeError) as exc:
        raise writer.refuse(None, f"not a readable {fmt} archive: {_why(exc)}") from exc


_TYPES = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
ONLY = "archives may hold only regular files and directories"


def _type_reason(mode_kind: int | None, member: tarfile.TarInfo | None) -> str:
    if member is not None:
        if member.issym():
            return f"a symbolic link (to {printable(member.linkname)}); {ONLY}"
        if member.islnk():
            return f"a hard link (to {printable(member.linkname)}); {ONLY}"
        what = ("a character device" if member.ischr() else "a block device" if member.isblk() else
                "a FIFO" if member.isfifo() else f"an entry of type {member.type!r}")
        return f"{what}; {ONLY}"
    return f"{_TYPES.get(mode_kind or 0, f'an entry of mode {mode_kind:o}')}; {ONLY}"


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
