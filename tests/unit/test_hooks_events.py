"""Hooks: the [hooks] manifest section, the CloudEvents envelope and the durable outbox (host.hooks.events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from host.hooks.events import CloudEvent, emit, matches
from host.registry import Registry
from manifests import ManifestValidationError, parse_manifest


def manifest(name: str, events: tuple[str, ...] = (), grants: tuple[str, ...] = (), **hooks: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "entrypoint": "app:app",
            "permissions": {"host_api": list(grants)}, "hooks": {"events": list(events), **hooks}}


def install(reg: Registry, name: str, events: tuple[str, ...] = (), grants: tuple[str, ...] = ()) -> None:
    m = parse_manifest(manifest(name, events, grants or tuple(f"events:subscribe:{e}" for e in events)))
    reg.put(name, "1.0", "i1", m.model_dump(mode="json"), True)


def test_a_subscription_needs_its_permission() -> None:
    with pytest.raises(ManifestValidationError, match=r"'notes\.note\.created' needs 'events:subscribe:notes\.note"):
        parse_manifest(manifest("a", ("notes.note.created",)))
    with pytest.raises(ManifestValidationError, match=r"'notes\.\*' needs"):
        parse_manifest(manifest("a", ("notes.*",), ("events:subscribe:notes.note.*",)))
    assert parse_manifest(manifest("a", ("notes.note.created",), ("events:subscribe:notes.*",))).hooks.events


@pytest.mark.parametrize("bad", ["events:subscribe:", "events:delete:x", "kv:admin", "events:subscribe:a..b"])
def test_host_api_scopes_are_checked(bad: str) -> None:
    with pytest.raises(ManifestValidationError, match="host_api"):
        parse_manifest(manifest("a", grants=(bad,)))


def test_filter_names_are_unique_and_points_known() -> None:
    f = {"name": "waf", "point": "request.before"}
    with pytest.raises(ManifestValidationError, match="filter names must be unique: waf"):
        parse_manifest(manifest("a", filters=[f, f]))
    with pytest.raises(ManifestValidationError, match="point"):
        parse_manifest(manifest("a", filters=[{"name": "x", "point": "request.after"}]))


@pytest.mark.parametrize(("pattern", "kind", "hit"), [
    ("notes.note.created", "notes.note.created", True), ("notes.*", "notes.note.created", True),
    ("*", "plugin.installed", True), ("notes.*", "notesx.note.created", False),
    ("notes.note.created", "notes.note.deleted", False), ("plugin.*", "host.started", False),
])
def test_patterns(pattern: str, kind: str, hit: bool) -> None:
    assert matches(pattern, kind) is hit


def test_emit_fans_out_to_subscribers_once_per_id(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    install(reg, "notes")
    install(reg, "seer", ("notes.note.created",))
    install(reg, "all", ("notes.*",))
    install(reg, "other", ("plugin.*",))
    ev = CloudEvent(source="/plugins/notes", type="notes.note.created", data={"id": 1})
    assert emit(reg, ev) == 2
    assert emit(reg, ev) == 0  # the same id again: already queued (dedupe)
    rows = reg._conn().execute("SELECT plugin, event_id, state FROM hook_deliveries ORDER BY plugin").fetchall()
    assert [tuple(r) for r in rows] == [("all", ev.id, "pending"), ("seer", ev.id, "pending")]


def test_the_envelope_is_cloudevents_structured_json() -> None:
    ev = CloudEvent.model_validate_json(CloudEvent(source="/host", type="host.started").to_json())
    assert ev.specversion == "1.0" and ev.id.startswith("evt_") and ev.time.endswith("Z")
    with pytest.raises(ValueError, match="extra"):
        CloudEvent.model_validate({"source": "/host", "type": "host.started", "subject": "x"})


def test_the_operator_is_told_what_hooks_a_plugin_has_before_installing() -> None:
    from host.risk import assess, grants

    m = parse_manifest(manifest("waf", ("plugin.*",), ("events:subscribe:plugin.*",),
                                filters=[{"name": "rules", "point": "request.before"}]))
    hooks = next(g for g in grants(m) if g.permission == "hooks")
    assert hooks.value == "events plugin.*; filter rules at request.before (200 ms, on_error=allow)"
    assert "+2 request.before filter: sees every request to the other plugins (headers and cookies) and may " \
           "refuse it or add headers" in assess(m).reasons


def test_enabling_and_disabling_emit_host_events(tmp_path: Path) -> None:
    from host import operations
    from host.layout import Layout
    from host.settings import HostSettings

    settings = HostSettings(home=tmp_path)
    layout = Layout(tmp_path)
    layout.ensure()
    reg = Registry(layout.registry)
    install(reg, "watcher", ("plugin.*",))
    install(reg, "notes")
    operations.set_enabled(settings, reg, layout, "notes", False, who="local:test")  # no supervisor: registry only
    operations.set_enabled(settings, reg, layout, "notes", False, who="local:test")  # no change: no event
    operations.set_enabled(settings, reg, layout, "notes", True, who="local:test")
    rows = reg.query("SELECT plugin, type, event FROM hook_deliveries ORDER BY id")
    assert [(r["plugin"], r["type"]) for r in rows] == [("watcher", "plugin.disabled"), ("watcher", "plugin.enabled")]
    event = CloudEvent.model_validate_json(rows[0]["event"])
    assert (event.source, event.data) == ("/host", {"plugin": "notes"})
