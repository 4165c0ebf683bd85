"""Errors of the manifest package.

ManifestError                 any problem with a plugin.toml; carries ``path`` and ``field``
 ├── ManifestNotFound         no plugin.toml where one was expected
 ├── ManifestSyntaxError      not valid TOML
 ├── ManifestValidationError  valid TOML, but a field breaks the schema
 └── EntrypointNotFound       the entrypoint names a module or attribute the plugin directory does not have
"""

from __future__ import annotations

from pathlib import Path


class ManifestError(Exception):
    """A plugin manifest cannot be used. ``str(err)`` is one line: file, field, what is allowed."""

    def __init__(self, path: Path | str, message: str, field: str | None = None) -> None:
        self.path = Path(path)
        self.field = field
        self.message = message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


class ManifestNotFound(ManifestError):
    pass


class ManifestSyntaxError(ManifestError):
    pass


class ManifestValidationError(ManifestError):
    pass


class EntrypointNotFound(ManifestError):
    pass
