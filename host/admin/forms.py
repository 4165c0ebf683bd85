"""What the admin UI's forms become: typed setting values for the supervisor, and uploaded archives staged in
the uploads directory (Layout.uploads) for it. No Flask request state."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}(\.tar\.gz|\.tgz|\.tar|\.zip)$")  # host.supervisor.admin_install's
STALE_UPLOAD = 3600.0  # an upload whose consent page was abandoned is removed after this long


class UploadDir:
    """Stages an uploaded archive in Layout.uploads (the web tier may create files there; the supervisor reads
    them) under a random name, written in full before the name is handed on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stage(self, stream: IO[bytes], filename: str) -> str:
        suffix = next((s for s in ARCHIVE_SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None:
            raise ValueError(f"{os.path.basename(filename)[:100]}: not a plugin archive "
                             f"({', '.join(ARCHIVE_SUFFIXES)})")
        name = secrets.token_hex(16) + suffix
        fd = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):  # the app's MAX_CONTENT_LENGTH bounds the whole request
                    out.write(chunk)
        except BaseException:
            (self.path / name).unlink(missing_ok=True)
            raise
        return name

    def discard(self, name: str) -> None:
        if UPLOAD_NAME.fullmatch(name):
            (self.path / name).unlink(missing_ok=True)

    def sweep(self, now: float | None = None) -> None:
        """Remove uploads whose consent page was abandoned (older than :data:`STALE_UPLOAD`)."""
        now = time.time() if now is None else now
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return
        for entry in entries:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if UPLOAD_NAME.fullmatch(entry.name) and age > STALE_UPLOAD:
                    os.unlink(entry.path)
            except OSError:
                continue  # another's (the sticky bit), or gone already


def form_values(rows: list[dict[str, Any]], form: Mapping[str, str]) -> dict[str, Any]:
    """The settings form → typed values for the supervisor, which checks them against the manifest again.

    ``rows``: the op ``settings``' rows (key, type, secret, ...). An empty secret field keeps the stored secret
    (the page never has it); an empty ordinary field unsets the value (None: back to its default). A checkbox
    is sent only when ticked, so a boolean is read when its hidden ``<key>.present`` marker is there."""
    out: dict[str, Any] = {}
    for row in rows:
        key, kind = str(row["key"]), row.get("type", "string")
        if kind == "boolean":
            if f"{key}.present" in form:
                out[key] = form.get(key) == "true"
            continue
        if key not in form:
            continue
        text = str(form.get(key, ""))
        if text.strip() == "":
            if not row.get("secret"):
                out[key] = None
            continue
        out[key] = text if kind == "string" else _number(key, kind, text)
    return out


def _number(key: str, kind: str, text: str) -> int | float:
    try:
        return int(text.strip(), 10) if kind == "integer" else float(text.strip())
    except ValueError:
        raise ValueError(f"{key}: expected {'an integer' if kind == 'integer' else 'a number'}") from None
