"""manifests.view: a stored manifest, read back without pydantic (the supervisor's), answers what the model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from host.hooks.events import CloudEvent, HostEvent, host_event
from manifests import Manifest, ManifestError, load_manifest, parse_manifest
from manifests.view import ManifestView, View, manifest_view

ROOT = Path(__file__).resolve().parents[2]
DIRS = sorted(p.parent for pattern in ("plugins/*/plugin.toml", "tests/fixtures/plugins/*/plugin.toml")
              for p in ROOT.glob(pattern))
# Every field set away from its default, nested sections, settings and hooks included.
EVERYTHING: dict[str, Any] = {
    "name": "full", "version": "2.0.1rc1", "entrypoint": "pkg.app:create()", "description": "all of it",
    "requirements": ["flask>=3", "six==1.16.0"], "health_path": "/up",
    "permissions": {
        "network": {"outbound": ["api.example.com:443", "*.example.org:443", "[::1]:5432", "10.0.0.7:5432"]},
        "filesystem": {"read": ["/srv/ro"], "write": ["/srv/rw"]}, "environment": ["TZ_DB"],
        "resources": {"memory_mb": 512, "cpu_seconds": 60, "cpu_percent": None, "processes": 64, "open_files": 512,
                      "file_size_mb": 8, "workers": 2, "threads": 8, "disk_mb": 1024, "files": 5000},
        "requests": {"timeout_seconds": 5, "max_body_mb": 1, "max_websockets": 0, "websocket_idle_seconds": 9.5},
        "host_api": ["kv:read", "events:emit:full.thing.done", "events:subscribe:notes.*"],
        "kv": {"max_keys": 10, "max_kb": 64}},
    "nav": [{"title": "Home", "path": "/"}, {"title": "Admin", "path": "/admin?x=1"}],
    "hooks": {"events": ["notes.note.created"],
              "filters": [{"name": "auth", "point": "request.before", "on_error": "reject", "deadline_ms": 50}]},
    "settings": {"greeting": {"type": "string", "default": "hi", "choices": ["hi", "hello"]},
                 "secret_key": {"secret": True, "required": True, "description": "signs cookies"},
                 "ratio": {"type": "number", "default": 0.5}, "page_size": {"type": "integer", "default": 20},
                 "debug": {"type": "boolean"}},
}


def manifests() -> list[Manifest]:
    found = [parse_manifest(EVERYTHING)]
    for d in DIRS:
        try:
            found.append(load_manifest(d))
        except ManifestError:
            pass  # the fixtures of bad manifests
    return found


def same(model: Any, view: Any, where: str) -> None:
    """``view`` has every field of ``model`` with an equal value of the same type, recursively, and every property
    of its class (Destination objects included)."""
    if isinstance(model, BaseModel):
        assert isinstance(view, View), where
        for field in type(model).model_fields:
            same(getattr(model, field), getattr(view, field), f"{where}.{field}")
        for cls in type(model).__mro__[:-len(BaseModel.__mro__)]:  # ours, not pydantic's own
            for name, value in vars(cls).items():
                if isinstance(value, property) and not name.startswith("_"):
                    same(getattr(model, name), getattr(view, name), f"{where}.{name}")
    elif isinstance(model, tuple):
        assert type(view) is tuple and len(view) == len(model), where
        for n, (m, v) in enumerate(zip(model, view, strict=True)):
            same(m, v, f"{where}[{n}]")
    elif isinstance(model, dict):
        assert type(view) is dict and list(view) == list(model), where
        for key in model:
            same(model[key], view[key], f"{where}[{key}]")
    else:
        assert view == model and type(view) is type(model), where


@pytest.mark.parametrize("model", manifests(), ids=lambda m: m.name)
def test_a_stored_manifest_reads_back_as_the_model_validated_it(model: Manifest) -> None:
    stored = json.loads(json.dumps(model.model_dump(mode="json")))  # as the registry keeps it
    view = manifest_view(stored, f"registry:{model.name}")
    assert isinstance(view, ManifestView)
    same(model, view, model.name)
    assert view.model_dump(mode="json") == stored
    assert view == manifest_view(json.loads(json.dumps(stored)), "again") and view != parse_manifest(stored)


def test_what_the_supervisor_asks_of_a_view_answers_as_the_model_does() -> None:
    model = parse_manifest(EVERYTHING)
    view = manifest_view(model.model_dump(mode="json"), "registry:full")
    assert [str(d) for d in view.permissions.network.destinations] == [
        "api.example.com:443", "*.example.org:443", "[::1]:5432", "10.0.0.7:5432"]
    assert view.permissions.network.destinations[1].matches("a.example.org", 443)
    for key, setting in model.settings.items():
        for value in ("hi", "nope", 3, 0.25, True, "x" * 20000):
            assert outcome(view.settings[key].check, value) == outcome(setting.check, value), (key, value)
        for text in ("1", "0.5", "yes", "hello", " 7 "):
            assert outcome(view.settings[key].parse, text) == outcome(setting.parse, text), (key, text)


def outcome(check: Any, value: Any) -> tuple[Any, type]:
    """What a check returns (and its type), or the message of the ValueError it raises."""
    try:
        got = check(value)
    except ValueError as exc:
        got = str(exc)
    return got, type(got)


def test_a_view_is_frozen() -> None:
    view = manifest_view(parse_manifest(EVERYTHING).model_dump(mode="json"), "registry:full")
    with pytest.raises(AttributeError, match="frozen"):
        view.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        view.permissions.resources.memory_mb = 1  # type: ignore[misc]


@pytest.mark.parametrize("change", ["drop kv", "drop hooks", "extra field"])
def test_a_manifest_stored_in_another_shape_is_validated_by_the_model_as_before(change: str) -> None:
    """A manifest stored before a field existed gets that field's default from the model, not a KeyError."""
    stored = parse_manifest(EVERYTHING).model_dump(mode="json")
    if change == "drop kv":
        del stored["permissions"]["kv"]
    elif change == "drop hooks":
        del stored["hooks"]
        stored["permissions"]["host_api"] = ["kv:read"]
    else:
        stored["permissions"]["network"]["listen"] = True
    if change == "extra field":
        with pytest.raises(ManifestError, match=r"registry:full: .*permissions\.network\.listen"):
            manifest_view(stored, "registry:full")
        return
    got = manifest_view(stored, "registry:full")
    assert isinstance(got, Manifest)
    assert got.permissions.kv.max_keys == (1000 if change == "drop kv" else 10)


def test_a_host_event_is_the_cloud_event_it_stands_for() -> None:
    """The supervisor emits its own events without pydantic; subscribers get the same JSON as before."""
    event = host_event("plugin.quarantined", plugin="notes", reason="exit 1 — ünïcode \"quoted\"", n=3, x=None)
    assert isinstance(event, HostEvent)
    cloud = CloudEvent(id=event.id, time=event.time, source="/host", type=event.type, data=event.data)
    assert event.to_json() == cloud.to_json()
    assert json.loads(event.to_json())["id"].startswith("evt_")
    with pytest.raises(ValueError, match="not an event type"):
        host_event("Plugin Quarantined")
