"""Plugin uids unique per machine, not per home: one root-owned allocation file shared by every home.

Two homes on one machine used to run their first plugins as the same uid (uid_base + 1), so a plugin of
one host could signal, ptrace-probe or read what another host's plugin owns. Every root host now takes its
plugins' uids from ``HostSettings.uid_file`` (default ``/var/lib/plugin-host/uids.json``) under an
exclusive ``flock``: a counter that only grows (a uid is never handed out twice, so a new plugin never
inherits files a removed one left behind) and, for each uid in use, the home and plugin it belongs to.
A new uid is also never one that ``/etc/passwd`` or ``/etc/group`` knows, nor one that owns a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.errors import UidError

UID_MAX = 2**31 - 2  # below the 32-bit "no uid" value and safe for every tool that stores uids signed
SCAN_LIMIT = 100_000  # candidate uids looked at per allocation before giving up


@dataclass(frozen=True)
class UidFile:
    """The allocation file. ``proc`` is where running processes are looked up (tests pass a fake one)."""

    path: Path
    proc: Path = Path("/proc")

    def claim(self, home: Path, name: str, base: int, current: int | None = None) -> int:
        """The machine-wide uid of plugin ``name`` of ``home``, recorded as theirs.

        ``current``: the uid the home already gave the plugin (installed, or uninstalled with --keep-data);
        it is kept (its files are that uid's) unless another home's plugin holds it. Otherwise the uid this
        file recorded for the pair earlier (a failed install), else a new one at or above ``base + 1``."""
        owner = {"home": str(home), "plugin": name}
        with self._locked() as state:
            owners: dict[str, dict[str, str]] = state["owners"]
            mine = [int(u) for u, o in owners.items() if o == owner]
            if current is not None:
                held = owners.get(str(current))
                if held is not None and held != owner:
                    raise UidError(f"its uid {current} is also recorded for plugin {held['plugin']!r} of "
                                   f"{held['home']} ({self.path}); uninstall one of them", plugin=name)
                uid = current
            elif mine:
                uid = mine[0]
            else:
                uid = self._fresh(max(int(state["next"]), base + 1), owners)
            for other in mine:
                owners.pop(str(other), None)
            owners[str(uid)] = owner
            state["next"] = max(int(state["next"]), uid + 1)
            return uid

    def release(self, home: Path, name: str) -> None:
        """Forget the pair's uid (it is not handed out again: the counter only grows)."""
        owner = {"home": str(home), "plugin": name}
        with self._locked() as state:
            state["owners"] = {u: o for u, o in state["owners"].items() if o != owner}

    def _fresh(self, start: int, owners: dict[str, Any]) -> int:
        busy = ids_in_use(self.proc)
        for uid in range(start, min(start + SCAN_LIMIT, UID_MAX + 1)):
            if str(uid) not in owners and uid not in busy and not _known_to_nss(uid):
                return uid
        raise UidError(f"no free plugin uid from {start} ({self.path}): every candidate is taken")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The file's content under an exclusive lock (on a sibling lock file, so the data file itself can be
        replaced atomically); written back when the block ends without an error."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UidError(f"cannot open the machine-wide uid file {self.path}.lock: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            # homes that no longer exist hold no files and run nothing; their uids stay used up (the counter)
            state["owners"] = {u: o for u, o in state["owners"].items() if Path(o["home"]).exists()}
            yield state
            if json.dumps(state, sort_keys=True) != before:
                self._write(state)
        finally:
            os.close(lock)

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {"next": 0, "owners": {}}
        except OSError as exc:
            raise UidError(f"cannot read the machine-wide uid file {self.path}: {exc.strerror}") from exc
        with os.fdopen(fd) as fh:
            try:
                state = json.load(fh)
                return {"next": int(state["next"]), "owners": dict(state["owners"])}
            except (ValueError, KeyError, TypeError) as exc:
                raise UidError(f"the machine-wide uid file {self.path} is damaged ({exc}); fix or remove it "
                               "(plugins keep their uids; only new ones are allocated from it)") from exc

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def ids_in_use(proc: Path = Path("/proc")) -> set[int]:
    """Every uid and gid (real, effective, saved, filesystem) of a running process."""
    ids: set[int] = set()
    try:
        pids = [e.path for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return ids
    for pid in pids:
        try:
            with open(os.path.join(pid, "status")) as fh:
                for line in fh:
                    if line.startswith(("Uid:", "Gid:")):
                        ids.update(int(x) for x in line.split()[1:])
        except (OSError, ValueError):
            continue  # gone, or not a process
    return ids


def _known_to_nss(uid: int) -> bool:
    """A user or a group of that number exists (plugins run with gid = uid, so a group counts too)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False
