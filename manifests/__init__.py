"""The plugin manifest schema (plugin.toml). Depends on pydantic and packaging only."""

from manifests.errors import (
    EntrypointNotFound,
    ManifestError,
    ManifestNotFound,
    ManifestSyntaxError,
    ManifestValidationError,
)
from manifests.loader import MANIFEST_FILE, json_schema, load_manifest, parse_manifest
from manifests.model import Destination, Manifest, Permissions, parse_destination

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
