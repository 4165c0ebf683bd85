"""Errors of the host package; each carries the plugin (and file/field where known).

HostError                       exit code 1 unless stated
 ├── UsageError                 bad input from the user (exit 2)
 │    ├── PluginNotFound        no such installed plugin
 │    ├── SettingsError         a value for a plugin's [settings] is invalid or undeclared; ``key`` names it
 │    ├── ArchiveError          a plugin archive is refused (unsafe, too big, unreadable); ``member`` names it
 │    ├── NotGranted            the manifest asks for permissions the operator's --grant does not give; ``lines``
 │    ├── SignatureError        a bundle's signature is missing (HOST_SIGNATURES=require), invalid, from an
 │    │                         untrusted publisher, or a file differs from it; ``path`` names the file
 │    ├── DowngradeRefused      a version below the plugin's high-water mark, without --allow-downgrade
 │    └── WidenedNotGranted     an upgrade widens permissions and only --yes was given; ``widened`` lists them
 ├── IntegrityError             an installed plugin's code or venv changed since install: it must not start; ``path``
 ├── MissingSettings            a required setting has no value: the plugin cannot start; ``keys`` names them
 ├── InstallError               an install step failed; ``step`` names it, ``log`` points at the kept log
 ├── RegistryError              the registry could not be read or written
 ├── UidError                   the machine-wide uid file is unusable, or a plugin's uid is another home's
 ├── QuotaError                 a plugin's disk quota (its filesystem image) could not be set up
 │    └── QuotaUnavailable      this machine cannot enforce disk quotas at all (no root, loop devices, mkfs)
 ├── UnsafeTree                 root will not walk a plugin-writable tree (not a directory, too deep); ``path``
 ├── AdminError                 an admin op refused or failed; ``status`` (HTTP), ``title``, ``extra`` (RFC 9457)
 ├── HostApiError               a plugin's host-API call refused (host.hostapi); ``status``, ``title``, ``extra``
 └── SupervisorUnavailable      no `host serve` is running for this home (control socket absent)
"""

from __future__ import annotations

from pathlib import Path


class HostError(Exception):
    exit_code = 1

    def __init__(self, message: str, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(f"{plugin}: {message}" if plugin else message)


class UsageError(HostError):
    exit_code = 2


class PluginNotFound(UsageError):
    def __init__(self, plugin: str) -> None:
        super().__init__("is not installed (see `host list`)", plugin=plugin)


class SettingsError(UsageError):
    def __init__(self, plugin: str, key: str | None, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message, plugin=plugin)


class ArchiveError(UsageError):
    """One line: ``<archive>: <member>: <reason>`` (member and archive names made printable)."""

    def __init__(self, archive: str | None, member: str | None, reason: str) -> None:
        from host.terminal import printable

        self.archive = archive
        self.member = member
        self.reason = reason
        super().__init__(": ".join(printable(p) for p in (archive, member, reason) if p is not None))


class NotGranted(UsageError):
    """``lines``: one per permission asked beyond the grant (host.consent.excess); printed one per line."""

    def __init__(self, plugin: str, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("; ".join(lines), plugin=plugin)


class SignatureError(UsageError):
    """One line: ``<plugin>: signature: <file>: <reason>`` (host.signing)."""

    def __init__(self, plugin: str | None, path: str | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__("signature: " + (f"{path}: {reason}" if path else reason), plugin=plugin)


class DowngradeRefused(UsageError):
    def __init__(self, plugin: str, version: str, high: str) -> None:
        super().__init__(f"{version} is older than {high}, the highest version installed here before; refusing a "
                         "downgrade (pass --allow-downgrade to install it anyway; it is audited)", plugin=plugin)


class WidenedNotGranted(UsageError):
    def __init__(self, plugin: str, old_version: str, new_version: str, widened: tuple[str, ...]) -> None:
        self.widened = widened
        super().__init__(f"upgrading {old_version} → {new_version} widens its permissions ({'; '.join(widened)}); "
                         "--yes does not grant a widening: pass --grant-widened (or --grant FILE); "
                         f"{old_version} stays installed and serving", plugin=plugin)


class IntegrityError(HostError):
    """An installed file differs from what was recorded at install (host.integrity); ``detail`` has no plugin
    name in front (`host list` shows it in its own column)."""

    def __init__(self, plugin: str, path: str, reason: str) -> None:
        self.path = path
        self.detail = f"integrity: {path}: {reason}; refusing to start it (reinstall it: `host install --force`)"
        super().__init__(self.detail, plugin=plugin)


class MissingSettings(HostError):
    def __init__(self, plugin: str, keys: list[str]) -> None:
        self.keys = keys
        many = len(keys) > 1
        hint = " ".join(f"{k}=..." for k in keys)
        # without the plugin's name in front: `host list` shows it in its own column
        self.detail = (f"missing required setting{'s' if many else ''} {', '.join(keys)}: set "
                       f"{'them' if many else 'it'} with `host config {plugin} {hint}`")
        super().__init__(self.detail, plugin=plugin)


class InstallError(HostError):
    def __init__(self, plugin: str | None, step: str, message: str, log: Path | None = None) -> None:
        self.step = step
        self.log = log
        hint = f" (full log: {log})" if log else ""
        super().__init__(f"install failed while {step}: {message}{hint}", plugin=plugin)


class RegistryError(HostError):
    pass


class UidError(HostError):
    pass


class QuotaError(HostError):
    prefix = "disk quota"

    def __init__(self, plugin: str | None, message: str) -> None:
        self.detail = message
        super().__init__(f"{self.prefix}: {message}", plugin=plugin)


class QuotaUnavailable(QuotaError):
    prefix = "disk layer unavailable"


class UnsafeTree(HostError):
    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class SupervisorUnavailable(HostError):
    pass


class AdminError(HostError):
    """An admin op (host.supervisor.admin) that is refused or failed, as an HTTP status and problem title; the
    admin app answers it as an RFC 9457 problem. ``extra``: more members of the problem object."""

    def __init__(self, status: int, title: str, detail: str, **extra: object) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra
        super().__init__(detail)

    def problem(self) -> dict[str, object]:
        return {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail,
                **self.extra}


class HostApiError(HostError):
    """A host-API call (host.hostapi) refused: the plugin gets it as an RFC 9457 problem. ``extra``: more
    members of the problem object (e.g. ``permission``, the one it lacks)."""

    def __init__(self, status: int, title: str, detail: str, plugin: str | None = None, **extra: object) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra
        super().__init__(detail, plugin)

    def problem(self) -> dict[str, object]:
        return {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail,
                **self.extra}
