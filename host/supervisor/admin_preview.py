"""Admin op ``preview``: what an uploaded plugin archive asks for, before anyone grants it (the admin UI's
consent page). Reads the upload exactly as ``install`` will (host.supervisor.admin_install: copied out of the
uploads directory without following links, unpacked by host.archive) and loads its manifest; runs nothing from it,
changes nothing, and leaves the upload where it is for the ``install`` that follows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from host import upgrades
from host.risk import assess, grants
from host.supervisor.admin_install import unpacked_upload

if TYPE_CHECKING:
    from host.supervisor.admin import AdminOps


def preview_upload(ops: AdminOps, req: dict[str, Any]) -> dict[str, Any]:
    """name, version, description, requirements, ``permissions`` (the manifest's table: the grant that covers
    exactly what it asks), ``grants`` (each with the layer enforcing it, as `host check` prints), ``risk``, and
    the version it would replace (``installed``, None for a new plugin) with the permission difference
    (``changes``: ``widened`` and ``narrowed`` lines, host.upgrades; None for a new plugin)."""
    with unpacked_upload(ops, str(req.get("upload") or "")) as (_, manifest):
        risk = assess(manifest)  # the manifest is all it reads; the unpacked tree goes at once
    current = ops.registry.get(manifest.name)
    diff = upgrades.diff_for(ops.registry, ops.layout, manifest)
    return {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "requirements": list(manifest.requirements),
        "permissions": manifest.permissions.model_dump(mode="json"),
        "grants": [{"permission": g.permission, "value": g.value, "enforced_by": g.enforced_by}
                   for g in grants(manifest)],
        "risk": {"score": risk.score, "reasons": list(risk.reasons)},
        "installed": current.version if current is not None else None,
        "changes": {"widened": list(diff.widened), "narrowed": list(diff.narrowed)} if diff is not None else None,
    }
