"""The ``plugin.install`` filter point: before anything is built, the installer asks every live policy
filter about the manifest; the first rejection vetoes the install with its reason. The filters are those the
supervisor last published (run/hooks.json); with no host serving, none is reachable and each one's on_error
decides (``reject``: nothing installs until the policy plugin runs again)."""

from __future__ import annotations

from host.hooks.filters import Breaker, Caller, call, run_chain
from host.hooks.table import FilterTable
from host.layout import Layout
from manifests import Manifest

POINT = "plugin.install"


def install_policy(layout: Layout, manifest: Manifest, caller: Caller | None = None) -> str | None:
    """None when every filter allows the install; else why not, naming the filter."""
    refs = tuple(r for r in FilterTable(layout.hooks).at(POINT) if r.plugin != manifest.name)
    if not refs:
        return None
    data = {"name": manifest.name, "version": manifest.version, "manifest": manifest.model_dump(mode="json")}
    # A fresh breaker: one install is one call per filter, nothing to trip.
    verdict = run_chain(refs, POINT, data, Breaker(threshold=1_000_000), caller or call)
    if verdict.allowed:
        return None
    return f"refused by {verdict.by}: {verdict.reason}"
