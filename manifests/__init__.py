"""The plugin manifest schema (plugin.toml). Depends on pydantic and packaging only.

The pydantic models (manifests.model, manifests.loader) are imported when first asked for, so that
manifests.view, which reads stored manifests back without pydantic (the supervisor's), costs no pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from manifests.errors import (
    EntrypointNotFound,
    ManifestError,
    ManifestNotFound,
    ManifestSyntaxError,
    ManifestValidationError,
)
from manifests.rules import Destination, parse_destination

if TYPE_CHECKING:
    from manifests.loader import MANIFEST_FILE, json_schema, load_manifest, parse_manifest
    from manifests.model import Manifest, Permissions

_LAZY = {"MANIFEST_FILE": "manifests.loader", "json_schema": "manifests.loader", "load_manifest": "manifests.loader",
         "parse_manifest": "manifests.loader", "Manifest": "manifests.model", "Permissions": "manifests.model"}

__all__ = [
    "MANIFEST_FILE",
    "Destination",
    "EntrypointNotFound",
    "Manifest",
    "ManifestError",
    "ManifestNotFound",
    "ManifestSyntaxError",
    "ManifestValidationError",
    "Permissions",
    "json_schema",
    "load_manifest",
    "parse_destination",
    "parse_manifest",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'manifests' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
