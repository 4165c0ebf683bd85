"""Plugin archives built in memory for tests, hostile ones included: real 1 GiB zip and gzip bombs that take
about 1 MiB on disk and milliseconds to build."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
ZEROS_CRC_1GIB = 1533330096  # zlib.crc32(bytes(1 << 30)), which takes a second to compute



def make_tar(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> Path:
    opts = {"compresslevel": 1} if gz else {}
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT, **opts) as tf:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tinfo(name: str, type_: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "",
          pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.linkname = linkname
    if pax:
        info.pax_headers = pax
    return info


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """(name, data, unix mode incl. type bits; 0 = let zipfile decide)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def deflated_zeros(n: int) -> bytes:
    """A raw deflate stream of ``n`` zero bytes (n a multiple of 1 MiB), ~1 KiB per MiB, built in milliseconds:
    a full flush resets the compressor, so one compressed MiB can simply be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * (n // MiB) + c.flush()


def zip_bomb(path: Path, size: int = GiB, declared: int | None = None, name: str = "plugin/bomb.bin") -> Path:
    """A valid zip with one member of ``size`` zero bytes (what `unzip` would write), ~1 MiB on disk. With
    ``declared``, its headers state that size instead (and the CRC of that many zeros)."""
    data = deflated_zeros(size)
    usize = size if declared is None else declared
    crc = zeros_crc(usize)
    fn = name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), usize, len(fn), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (3 << 8) | 20, 20, 0, 8, 0, 0x21, crc, len(data),
                          usize, len(fn), 0, 0, 0, 0, 0o100644 << 16, 0)
    cd_offset = len(local) + len(fn) + len(data)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(fn), cd_offset, 0)
    path.write_bytes(local + fn + data + central + fn + end)
    return path


def zeros_crc(n: int) -> int:
    return ZEROS_CRC_1GIB if n == GiB else zlib.crc32(bytes(n))


def gzip_zeros(n: int) -> bytes:
    """One gzip member of ``n`` zero bytes (n a multiple of 1 MiB)."""
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated_zeros(n)
            + struct.pack("<II", zeros_crc(n), n & 0xFFFFFFFF))


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p, 1) for p in parts)


def tgz_bomb(path: Path, members: int = 1, size: int = GiB) -> Path:
    """A valid .tar.gz of ``members`` files of ``size`` zero bytes each, small on disk: gzip members can be
    concatenated, so each file's zeros are one precompressed member repeated."""
    zeros = gzip_zeros(size)
    out = []
    for i in range(members):
        info = tinfo(f"plugin/bomb{i}.bin")
        info.size = size
        out.append(gzip_members(info.tobuf(tarfile.PAX_FORMAT)))
        out.append(zeros)
    out.append(gzip_members(bytes(1024)))
    path.write_bytes(b"".join(out))
    return path
