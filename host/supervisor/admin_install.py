"""Install by upload (admin op ``install``): take the archive the admin web tier left in run/uploads, check it
the way `host install` does, refuse a manifest asking for more than the request grants, and run the install.

The upload is a stranger's file in a directory the web user writes to: it is opened by name relative to that
directory without following links, must be a regular file of the web user's, and is copied into root's own
scratch space before anything reads it (so the web tier cannot change it underneath). The archive is unpacked by
host.archive (zip-slip, links, devices and bombs refused, nothing left behind on failure); the install itself is
`host install` in a subprocess (the same validation, sandboxed build, registration and start as the CLI; its own
process, so pip's helpers never become the supervisor's children), audited as the token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import archive
from host.errors import AdminError
from host.operations import AUDIT_WHO_ENV
from host.terminal import printable
from manifests import Manifest, ManifestError, load_manifest

if TYPE_CHECKING:
    from host.supervisor.admin import AdminOps

log = logging.getLogger(__name__)
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(zip|tar\.gz|tgz|tar)$")
INSTALL_TIMEOUT = 840.0  # the admin app waits 900 s


def _copy_upload(ops: AdminOps, upload: str, dest: Path) -> None:
    """Copy run/uploads/``upload`` to ``dest`` (root's), refusing anything but a regular file of the web user's
    no larger than the upload limit."""
    if not UPLOAD_NAME.fullmatch(upload):
        raise AdminError(422, "Unprocessable Content", "bad upload reference")
    directory = os.open(ops.layout.uploads, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(upload, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except OSError as exc:
            raise AdminError(422, "Unprocessable Content",
                             f"the upload is gone or not a file ({exc.strerror})") from exc
    finally:
        os.close(directory)
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        owner = ops.sup.web_user.uid if ops.sup.web_user is not None else os.geteuid()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
            raise AdminError(422, "Unprocessable Content", "the upload is not a regular file of the web tier's")
        limit = ops.settings.admin_max_upload
        with open(dest, "xb") as out:
            os.fchmod(out.fileno(), 0o600)
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise AdminError(413, "Content Too Large", f"the archive is over {limit} bytes "
                                     "(HOST_ADMIN_MAX_UPLOAD)")
                out.write(chunk)


def _excess(manifest: Any, grant: dict[str, Any]) -> list[str]:
    from host.consent import excess

    return list(excess(manifest, grant))


@contextlib.contextmanager
def unpacked_upload(ops: AdminOps, upload: str, progress: Callable[[str], None] | None = None
                    ) -> Iterator[tuple[Path, Manifest]]:
    """The upload copied into root's scratch space, unpacked, and its manifest loaded: (plugin dir, manifest),
    all removed on exit. For ``install`` and ``preview`` (host.supervisor.admin_preview)."""
    suffix = upload.split(".", 1)[-1]
    with archive.scratch(ops.layout) as scratch:
        scratch.mkdir(mode=0o700)
        copy = scratch / f"upload.{suffix}"
        _copy_upload(ops, upload, copy)
        with archive.unpacked(copy, ops.layout, progress=progress) as root:
            try:
                manifest = load_manifest(root)
            except ManifestError as exc:  # named by its place in the archive, not in root's scratch space
                raise AdminError(422, "Invalid manifest", str(exc).replace(f"{root}/", "")) from None
            yield root, manifest


def install_upload(ops: AdminOps, who: str, req: dict[str, Any]) -> dict[str, Any]:
    grant = req.get("grant")
    if not isinstance(grant, dict):
        raise AdminError(422, "Unprocessable Content", "grant must be a JSON object (the manifest's [permissions])")
    output: list[str] = []
    with unpacked_upload(ops, str(req.get("upload") or ""), output.append) as (root, manifest):
        asked = _excess(manifest, grant)
        if asked:
            raise AdminError(409, "Permissions not granted",
                             f"{manifest.name} asks for more than the request grants; nothing was installed",
                             plugin=manifest.name, excess=asked)
        output += _run_install(ops, who, root, grant, enable=bool(req.get("enable", True)))
    rec = ops.registry.require(manifest.name)
    changed = not any("is already installed" in line for line in output)
    return {"plugin": ops.view(rec), "changed": changed, "output": output}


def _run_install(ops: AdminOps, who: str, root: Path, grant: dict[str, Any], enable: bool) -> list[str]:
    """The request's grant goes to `host install --grant -`, which checks it again and records it as what was
    granted (`host export`), not what the manifest asked for."""
    argv = [sys.executable, "-m", "host", "--home", str(ops.layout.home), "install", str(root), "--grant", "-"]
    if not enable:
        argv.append("--no-enable")
    env = {**os.environ, AUDIT_WHO_ENV: who}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env,
                              input=json.dumps(grant), check=False, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise AdminError(409, "Install failed", f"the install did not finish within {INSTALL_TIMEOUT:.0f}s") from exc
    lines = [printable(line.removeprefix("==> ")) for line in (done.stdout + done.stderr).splitlines() if line]
    if done.returncode != 0:
        errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        detail = errors[-1] if errors else (lines[-1] if lines else f"`host install` exited {done.returncode}")
        raise AdminError(422 if done.returncode == 2 else 409, "Install failed", detail, output=lines[-40:])
    return lines

