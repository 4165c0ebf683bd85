"""Upgrades: what a new version changes in the permissions the installed one was granted, and whether that
needs consent again (a widening does; `--yes` alone does not give it)."""

from __future__ import annotations

from dataclasses import dataclass

from host import consent, declarative
from host.errors import WidenedNotGranted
from host.layout import Layout
from host.registry import Registry
from manifests import Manifest, ManifestError, Permissions, parse_manifest


@dataclass(frozen=True)
class PermissionDiff:
    old_version: str
    new_version: str
    widened: tuple[str, ...]
    narrowed: tuple[str, ...]

    def refusal(self, plugin: str) -> WidenedNotGranted:
        return WidenedNotGranted(plugin, self.old_version, self.new_version, self.widened)

    def lines(self) -> list[str]:
        if not self.widened and not self.narrowed:
            return [f"permissions: unchanged since {self.old_version}"]
        return ([f"permissions changed since {self.old_version}:"] + [f"  widened:  {w}" for w in self.widened]
                + [f"  narrowed: {n}" for n in self.narrowed])


def granted_before(registry: Registry, layout: Layout, name: str) -> tuple[str, Permissions] | None:
    """(version, what it was granted) of the installed ``name``; None when it is not installed."""
    rec = registry.get(name)
    if rec is None:
        return None
    try:
        manifest = parse_manifest(rec.manifest, f"registry:{name}")
    except ManifestError:
        return rec.version, Permissions()
    return rec.version, declarative.provenance(registry, layout, rec, manifest)[1]


def diff_for(registry: Registry, layout: Layout, manifest: Manifest) -> PermissionDiff | None:
    """The permission change from the installed version to ``manifest``; None for a first install."""
    before = granted_before(registry, layout, manifest.name)
    if before is None:
        return None
    widened, narrowed = consent.upgrade_diff(before[1], manifest.permissions)
    return PermissionDiff(before[0], manifest.version, tuple(widened), tuple(narrowed))
