"""host.settings_view: the web tiers' pydantic-free settings answer what HostSettings answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host.settings import HostSettings
from host.settings_view import ENV, Derived, SettingsView, carry, received
from host.supervisor.web import SETTINGS_WITHHELD, web_env
from host.webtier import load_settings

PROPERTIES = sorted(name for name, value in vars(Derived).items() if isinstance(value, property))
VARIANTS: list[dict[str, Any]] = [
    {},
    {"web_worker_class": "gthread", "web_threads": 40, "plugin_queue": 3, "forwarded_allow_ips": "10.0.0.0/24, ::1",
     "plugin_domain": "Plugins.Example.com.", "bind": "0.0.0.0:80", "wheelhouse": Path("/srv/wheels"),
     "hook_retry_schedule": "0, 1.5", "idle_timeout": 30, "path_mode": False, "pip_args": "--index-url x"},
    {"forwarded_allow_ips": "*", "plugin_max_inflight": 7, "bind": "[::1]:8000", "plugin_domain": ""},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_the_web_tier_sees_every_field_and_property_as_the_supervisor_validated_it(
        tmp_path: Path, overrides: dict[str, Any]) -> None:
    settings = HostSettings(home=tmp_path / "." / "home", **overrides)
    view = received({ENV: carry(settings, SETTINGS_WITHHELD)})
    assert isinstance(view, SettingsView)
    for field in HostSettings.model_fields:
        if field in SETTINGS_WITHHELD:
            assert not hasattr(view, field)
        elif field == "home":  # handed over resolved, as the HOST_HOME the web tier used to get
            assert view.home == settings.home_dir
        else:
            assert getattr(view, field) == getattr(settings, field), field
            assert type(getattr(view, field)) is type(getattr(settings, field)), field
    for name in PROPERTIES:
        assert getattr(view, name) == getattr(settings, name), name


def test_every_derived_property_of_host_settings_is_shared_with_the_view() -> None:
    """A property added to HostSettings itself would be missing from the web tiers' view (AttributeError)."""
    own = [name for name, value in vars(HostSettings).items() if isinstance(value, property)]
    assert own == []
    assert {"inflight_limit", "queue_limit", "forwarded_networks", "origin_domain", "home_dir"} <= set(PROPERTIES)


def test_the_view_is_read_only(tmp_path: Path) -> None:
    view = received({ENV: carry(HostSettings(home=tmp_path))})
    with pytest.raises(AttributeError, match="frozen"):
        view.web_workers = 9  # type: ignore[misc]


def test_without_the_variable_there_is_no_view() -> None:
    assert received({}) is None


def test_the_web_tier_environment_carries_the_settings_but_no_pip_arguments(tmp_path: Path) -> None:
    env = web_env(HostSettings(home=tmp_path, pip_args="--index-url https://user:token@mirror/simple"))
    values = json.loads(env[ENV])["values"]
    assert values["home"] == str(tmp_path.resolve()) and "pip_args" not in values
    assert "token" not in json.dumps(env)


def test_a_web_tier_run_by_hand_reads_the_host_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("HOST_HOME", str(tmp_path))
    monkeypatch.setenv("HOST_WEB_WORKERS", "5")
    settings = load_settings()
    assert isinstance(settings, HostSettings) and settings.web_workers == 5
    monkeypatch.setenv(ENV, carry(HostSettings(home=tmp_path, web_workers=3)))
    settings = load_settings()
    assert isinstance(settings, SettingsView) and settings.web_workers == 3  # the supervisor's values win
