"""A bundle's ``requirements.lock``: every package pinned with its hashes, installed with pip's
``--require-hashes`` instead of resolving the manifest's requirements (and the runtime's) afresh.

Checked before pip runs: each requirement is ``name==version`` with at least one ``--hash=``, and the lock pins
the runtime (flask, gunicorn) and every package the manifest requires, so the lock is the whole truth of what
gets installed. pip then refuses any file whose hash is not listed. Imports nothing from the host but errors.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement

from host.errors import UsageError

LOCK_FILE = "requirements.lock"
RUNTIME = ("flask", "gunicorn")
_NAME = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    return _NAME.sub("-", name).lower()


def check(plugin: str, text: str, requirements: tuple[str, ...]) -> list[str]:
    """The pinned package names; UsageError naming the lock's line that is not pinned with a hash, or a
    required package the lock leaves out."""
    pinned: list[str] = []
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            raise UsageError(f"{LOCK_FILE}: line {number}: options are not allowed in a lock ({line.split()[0]})",
                             plugin=plugin)
        spec, *hashes = line.split(" --hash=")
        try:
            req = Requirement(spec.strip())
        except InvalidRequirement as exc:
            raise UsageError(f"{LOCK_FILE}: line {number}: {exc}", plugin=plugin) from exc
        pins = [s for s in req.specifier if s.operator in ("==", "===")]
        if not pins or req.url:
            raise UsageError(f"{LOCK_FILE}: line {number}: {req.name} is not pinned (name==version)", plugin=plugin)
        if not hashes:
            raise UsageError(f"{LOCK_FILE}: line {number}: {req.name} has no --hash=sha256:...", plugin=plugin)
        pinned.append(canonical(req.name))
    wanted = [*RUNTIME, *(canonical(Requirement(r).name) for r in requirements)]
    missing = [n for n in wanted if n not in pinned]
    if missing:
        raise UsageError(f"{LOCK_FILE}: does not pin {', '.join(missing)} (it must pin the runtime, flask and "
                         "gunicorn, and every package plugin.toml requires, with their dependencies)", plugin=plugin)
    return pinned


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments dropped and backslash continuations joined."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, " ".join(buf.split())))
        buf = ""
    if buf.strip():
        out.append((start, " ".join(buf.split())))
    return out
