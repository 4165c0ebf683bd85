"""The plugin.toml schema: frozen pydantic models, default deny. Depends on pydantic and packaging only."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from manifests.hooks import EVENT_PATTERN, Hooks, check_permissions
from manifests.requirements import check_requirement
from manifests.rules import EVENT_TYPE_PATTERN, Destination, ManifestRules, NetworkRules, parse_destination
from manifests.settings import Setting, SettingKey, check_environment, check_keys

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
# module:attr (a WSGI callable), module:factory() (gunicorn's call syntax, no arguments), or a bare module
# (holding a seed-style PluginBase subclass).
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\(\))?)?$"
# PEP 440 public versions (the canonical regex from the spec, without local versions).
_PEP440 = re.compile(
    r"^v?(?:(?:[0-9]+)!)?[0-9]+(?:\.[0-9]+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:(?:-[0-9]+)|(?:[-_.]?(?:post|rev|r)[-_.]?[0-9]*))?(?:[-_.]?dev[-_.]?[0-9]*)?$",
    re.IGNORECASE,
)
# C0 and C1 control characters (ESC, CR, BEL, the 8-bit CSI) and bidirectional overrides and isolates: none
# belongs in text an operator reads in a terminal, and each can change what the rest of the screen shows.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Environment variables a plugin may never receive even if it asks: they change how the runtime loads code.
FORBIDDEN_ENV = frozenset({"LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})

MiB = 1024 * 1024
# Destination and parse_destination live in manifests.rules (no pydantic), re-exported here.
__all__ = ["EVENT_TYPE_PATTERN", "Destination", "parse_destination"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Network(NetworkRules, _Frozen):
    """Outbound network. Default: none at all (an empty network namespace, no IP sockets).

    Every plugin gets its own network namespace; what it may reach goes through the host's egress point,
    which refuses loopback, link-local, private and multicast addresses and the host itself unless a
    destination names that IP literally."""

    outbound: StrictBool | tuple[str, ...] = Field(
        False,
        description=(
            "false: no network. true: the public internet, any port (or the listed `ports`). A list of "
            "destinations 'host:port' ('api.example.com:443', '*.example.org:443', '203.0.113.7:5432', "
            "'127.0.0.1:5432'): only those."
        ),
    )
    ports: tuple[Annotated[int, Field(ge=1, le=65535)], ...] = Field(
        (), description="With outbound = true: the TCP ports the plugin may reach; empty = any port."
    )

    @field_validator("outbound")
    @classmethod
    def _destinations(cls, value: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
        if isinstance(value, tuple):
            if not value:
                raise ValueError("an empty destination list grants nothing: write outbound = false")
            if len(value) > 256:
                raise ValueError("at most 256 destinations")
            for d in value:
                parse_destination(d)
        return value


class Filesystem(_Frozen):
    """Extra host paths beyond the plugin's own venv, code (read-only) and data dir (read-write)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @field_validator("read", "write")
    @classmethod
    def _absolute(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for p in paths:
            if not p.startswith("/") or _UNSAFE_TEXT.search(p) or "/../" in f"{p}/":
                raise ValueError(f"{p!a}: must be an absolute path without '..' or control characters")
        return paths


class Resources(_Frozen):
    """Resource ceilings, enforced by cgroups, rlimits and a filesystem image per plugin."""

    memory_mb: int = Field(256, ge=32, le=65536)
    cpu_seconds: int | None = Field(None, ge=1, description="CPU seconds per process (RLIMIT_CPU).")
    cpu_percent: int | None = Field(100, ge=1, le=6400, description="CPU quota, 100 = one core; null = no cap.")
    processes: int = Field(32, ge=4, le=4096, description="Processes and threads.")
    open_files: int = Field(256, ge=32, le=65536)
    file_size_mb: int = Field(64, ge=1, le=1048576)
    workers: int = Field(1, ge=1, le=16, description="gunicorn worker processes.")
    threads: int = Field(4, ge=1, le=64, description="Threads per worker.")
    disk_mb: int = Field(512, ge=16, le=1048576,
                         description="Disk space for everything the plugin writes: its data dir, TMPDIR included.")
    files: int = Field(20000, ge=100, le=10_000_000, description="Files and directories it may create (inodes).")


class Requests(_Frozen):
    """Limits the proxy applies to each request, and to the WebSockets it relays."""

    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_body_mb: int = Field(16, ge=0, le=102400)
    max_websockets: int = Field(16, ge=0, le=4096, description="WebSockets open at once (503 beyond); 0 = none.")
    websocket_idle_seconds: float = Field(300.0, gt=0, le=86400,
                                          description="A WebSocket with no bytes either way for this long is closed.")


# Host API permissions (host.hostapi enforces them): fixed ones, and events:* ones that name an event type.
HOST_API_PERMISSIONS = frozenset({"kv:read", "kv:write", "settings:read", "users:read", "events:read"})
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)
# events:subscribe:<pattern>: an event type or pattern as [hooks] events takes them (manifests.hooks).
_SUBSCRIBE_PATTERN = re.compile(EVENT_PATTERN)


def check_host_api_permission(perm: str) -> None:
    """ValueError unless ``perm`` is a host API permission this host knows."""
    if perm in HOST_API_PERMISSIONS:
        return
    if perm.startswith("events:emit:") and _EVENT_TYPE.match(perm.removeprefix("events:emit:")):
        return
    if perm.startswith("events:subscribe:") and _SUBSCRIBE_PATTERN.match(perm.removeprefix("events:subscribe:")):
        return
    raise ValueError(f"{perm[:80]!a}: not a host API permission (one of {', '.join(sorted(HOST_API_PERMISSIONS))}, "
                     "events:emit:<name>.<noun>.<verb>, events:subscribe:<pattern>)")


class KvQuota(_Frozen):
    """How much the plugin may keep in its host KV store (key <= 150 characters, value <= 64 KiB each)."""

    max_keys: int = Field(1000, ge=1, le=1_000_000)
    max_kb: int = Field(1024, ge=1, le=1024 * 1024, description="Total size of keys and values, KiB.")


class NavEntry(_Frozen):
    """A menu entry the host shows on its own pages (as text and a link; never the plugin's HTML)."""

    title: str = Field(..., min_length=1, max_length=60)
    path: str = Field("/", pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?#-]{0,200}$",
                      description="Under the plugin's own URL.")

    @field_validator("title")
    @classmethod
    def _text(cls, text: str) -> str:
        if _UNSAFE_TEXT.search(text):
            raise ValueError(f"{text[:60]!a}: one line of text without control characters")
        return text


class Permissions(_Frozen):
    """Everything a plugin may do. Anything not granted here is denied."""

    network: Network = Network()
    filesystem: Filesystem = Filesystem()
    environment: tuple[str, ...] = Field((), description="Host environment variables passed through by name.")
    resources: Resources = Resources()
    requests: Requests = Requests()
    host_api: tuple[str, ...] = Field(
        (), description="Host API permissions, 'resource:action': kv:read, kv:write, settings:read, users:read, "
                        "events:emit:<name>.<noun>.<verb> (only under the plugin's own name), "
                        "events:subscribe:<pattern>.")
    kv: KvQuota = KvQuota()

    @field_validator("host_api")
    @classmethod
    def _host_api(cls, perms: tuple[str, ...]) -> tuple[str, ...]:
        for perm in perms:
            check_host_api_permission(perm)
        return perms

    @field_validator("environment")
    @classmethod
    def _env_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for n in names:
            if not _ENV_NAME.match(n):
                raise ValueError(f"{n!r}: must be an environment variable name")
            if n in FORBIDDEN_ENV:
                raise ValueError(f"{n!r}: may not be passed to a plugin")
        return names


class Manifest(ManifestRules, _Frozen):
    """A plugin's ``plugin.toml``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Becomes paths and URLs.")]
    version: str
    entrypoint: Annotated[str, Field(pattern=ENTRYPOINT_PATTERN)]
    description: str = Field("", max_length=500)
    requirements: tuple[str, ...] = ()
    health_path: str = Field("/", pattern=r"^/[!-~]*$", description="Path probed for readiness/liveness.")
    permissions: Permissions = Permissions()
    nav: tuple[NavEntry, ...] = Field((), max_length=8, description="Menu entries on the host's pages.")
    hooks: Hooks = Field(Hooks(), description="Events the plugin receives and filters it provides (issue 13).")
    settings: dict[SettingKey, Setting] = Field(
        default_factory=dict,
        description="What the operator configures (`host config NAME key=value`): each key arrives as the "
                    "environment variable KEY (upper case) and in $PLUGIN_DATA_DIR/settings.json.")

    @field_validator("settings")
    @classmethod
    def _setting_keys(cls, settings: dict[str, Setting]) -> dict[str, Setting]:
        return check_keys(settings)

    @model_validator(mode="after")
    def _settings_environment(self) -> Manifest:
        check_environment(self.settings, self.permissions.environment)
        check_permissions(self.hooks, self.permissions.host_api)
        return self

    @model_validator(mode="after")
    def _own_event_types(self) -> Manifest:
        for perm in self.permissions.host_api:
            kind = perm.removeprefix("events:emit:")
            if kind != perm and kind.split(".", 1)[0] != self.name:
                raise ValueError(f"{perm}: a plugin may only emit event types under its own name "
                                 f"({self.name}.<noun>.<verb>)")
        return self

    @field_validator("version")
    @classmethod
    def _pep440(cls, v: str) -> str:
        if not _PEP440.match(v):
            raise ValueError(f"{v!r} is not a PEP 440 version (e.g. 1.0.0)")
        return v

    @field_validator("description")
    @classmethod
    def _one_line_of_text(cls, text: str) -> str:
        if _UNSAFE_TEXT.search(text):
            raise ValueError(f"{text[:80]!a}: one line of text without control characters "
                             "(no newlines, tabs, escape sequences or bidirectional overrides)")
        return text

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, reqs: tuple[str, ...]) -> tuple[str, ...]:
        for r in reqs:
            check_requirement(r)
        return reqs
