"""HostSettings' values as the supervisor validated them, for the web tiers, which then never import pydantic.

HostSettings (host.settings) stays the one source of truth: its fields, defaults, HOST_* variables and error
messages. `host serve` validates them once; the supervisor hands each web tier the result as JSON in one
environment variable (:func:`carry`), and :func:`received` turns it back into a frozen :class:`SettingsView`
with the same field values and the same derived properties (:class:`Derived`, which HostSettings inherits).
The supervisor gets them the same way from `host serve` (host.supervisor.serve), all fields included.
Importing pydantic and pydantic-settings would cost each process ~15 MiB resident (issue 12: host idle PSS).

Must not import pydantic or host.settings at run time.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NoReturn, cast

from host import origins

if TYPE_CHECKING:
    from host.settings import HostSettings

ENV = "PLUGIN_HOST_SETTINGS"  # not HOST_*: that prefix is the operator's, one variable per field


class Derived:
    """What HostSettings computes from its fields; a SettingsView answers the same from the same values."""

    if TYPE_CHECKING:  # the fields these read (declared, validated and documented in HostSettings)
        home: Path
        bind: str
        plugin_domain: str | None
        forwarded_allow_ips: str
        web_worker_class: str
        web_threads: int
        plugin_max_inflight: int
        plugin_queue: int
        hook_retry_schedule: str

    @property
    def hook_schedule(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.hook_retry_schedule.split(","))

    @property
    def inflight_limit(self) -> int:
        if self.plugin_max_inflight:
            return self.plugin_max_inflight
        return 64 if self.web_worker_class == "gevent" else max(1, min(32, self.web_threads // 2))

    @property
    def queue_limit(self) -> int:
        """Waiters per plugin per web worker. With threads, each waiter holds one, so a hung plugin may hold
        all but a reserve of them (in flight + waiting): a quarter of the threads, at most 32, which serve
        every other plugin and the host's pages."""
        if self.plugin_queue >= 0:
            return self.plugin_queue
        if self.web_worker_class == "gevent":
            return 1024
        return max(0, self.web_threads - self.inflight_limit - max(1, min(32, self.web_threads // 4)))

    @property
    def forwarded_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The front proxies' networks (``forwarded_allow_ips``); "*" is every address."""
        items = self.forwarded_allow_ips.split(",") if self.forwarded_allow_ips else []
        if "*" in items:
            return ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")
        return tuple(ipaddress.ip_network(item) for item in items)

    @property
    def origin_domain(self) -> str:
        """The plugin domain in force: the one set, else the default for ``bind``; "" = origin mode off."""
        return origins.default_domain(self.bind) if self.plugin_domain is None else self.plugin_domain

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


class SettingsView(Derived):
    """Validated settings values, read-only, with HostSettings' derived properties."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"settings are frozen: cannot set {name!r}")

    def __repr__(self) -> str:
        return f"SettingsView(home={self.__dict__.get('home')!r}, bind={self.__dict__.get('bind')!r})"


def fields(settings: HostSettings) -> dict[str, Any]:
    """Every field's value, of HostSettings or of a SettingsView (the supervisor has the latter)."""
    if isinstance(settings, SettingsView):
        return dict(vars(settings))
    return settings.model_dump()


def carry(settings: HostSettings, withheld: Collection[str] = ()) -> str:
    """``settings`` as the value of :data:`ENV`: every field but ``withheld``; the home resolved."""
    values = {k: v for k, v in fields(settings).items() if k not in withheld}
    values["home"] = settings.home_dir
    paths = sorted(k for k, v in values.items() if isinstance(v, PurePath))
    return json.dumps({"values": {k: str(v) if k in paths else v for k, v in values.items()}, "paths": paths})


def received(environ: Mapping[str, str] = os.environ) -> HostSettings | None:
    """The settings :func:`carry` put in ``environ``, or None when it holds none (e.g. run by hand).

    Typed as HostSettings, whose fields and properties it has (tests/unit/test_settings_view.py compares them);
    pydantic's own methods (model_dump ...) it has not."""
    text = environ.get(ENV)
    return from_text(text) if text else None


def from_text(text: str) -> HostSettings:
    """The settings in :func:`carry`'s ``text``."""
    data = json.loads(text)
    values = dict(data["values"])
    for key in data["paths"]:
        values[key] = Path(values[key])
    return cast("HostSettings", SettingsView(values))
