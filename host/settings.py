"""HostSettings: the one settings object, read from HOST_* environment variables and passed explicitly.

The web tiers get its validated values from the supervisor instead (host.settings_view) and never import this."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from host import origins
from host.settings_view import Derived


class HostSettings(Derived, BaseSettings):
    """Operator settings. Every field can be set as ``HOST_<FIELD>`` (e.g. ``HOST_HOME=/srv/plugins``).

    Its derived properties (inflight_limit, origin_domain ...) are host.settings_view.Derived's, shared with the
    pydantic-free view of these values that the web tiers get (host.settings_view)."""

    model_config = SettingsConfigDict(env_prefix="HOST_", frozen=True, extra="forbid")

    home: Path = Field(Path("./var"), description="Where the registry, plugins, data, sockets and logs live.")
    bind: str = "127.0.0.1:8000"
    # The admin listener (admin API, admin UI, /metrics): its own origin, never one a plugin serves pages on.
    # HOST:PORT, or "" for none. Requests whose Host (or Origin) is not this address are refused.
    admin_bind: str = Field("127.0.0.1:8001", pattern=r"^(\S+:[0-9]{1,5})?$")
    # The admin origin as browsers see it when a front proxy serves the admin listener under a name
    # (e.g. "https://admin.example.com"); accepted besides `admin_bind`'s own host:port.
    admin_origin: str = Field("", pattern=r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$")
    # The largest plugin archive the admin API accepts for upload (bytes); the archive's unpacked size has its
    # own limits (host.archive).
    admin_max_upload: int = Field(64 * 1024 * 1024, ge=1024)
    # One browser origin per plugin: `<name>.<plugin_domain>` serves plugin <name> at the root of its own
    # origin (host.origins). Unset: "localhost" when `bind` is a loopback address (http://notes.localhost:8000/
    # needs no DNS), else off. "" switches it off. Production: a wildcard DNS name and certificate (README).
    plugin_domain: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]{0,200}$")
    # Path mode: /plugins/<name>/ on the main host name, where every plugin shares one origin with the others
    # and the host. false: plugins are reachable on their own origins only.
    path_mode: bool = True
    # Path mode: a request for a path of the main host name that is no host page, made from a plugin's page
    # (by its Referer), is redirected under that plugin's prefix, so apps that write absolute links
    # (href="/static/app.css", action="/login") work by path too. false: such requests get the host's 404.
    path_fallback: bool = True
    # Front proxies (nginx, a load balancer) whose X-Forwarded-For/-Proto/-Host the web tier believes:
    # comma-separated addresses or networks ("10.0.0.5", "10.0.0.0/24"); "*" = any peer, only when nothing
    # but the proxy can reach `bind`. Empty: believe no one, loopback included (gunicorn's own default trusts
    # 127.0.0.1 and ::1, so any local process could tell plugins the scheme is https).
    forwarded_allow_ips: str = ""
    # A header naming the signed-in user that a front proxy's SSO sets (e.g. "X-Forwarded-User"): believed only
    # from the peers in forwarded_allow_ips, always removed before a request reaches a plugin. Empty: none.
    trusted_user_header: str = Field("", pattern=r"^([A-Za-z0-9-]{1,64})?$")
    # Host-API calls per plugin: a token bucket of host_api_burst calls refilled at host_api_rate a second.
    host_api_rate: float = Field(50.0, gt=0)
    host_api_burst: int = Field(100, ge=1)
    web_workers: int = Field(2, ge=1, le=64)
    # gevent (default): a greenlet per request, so thousands of slow clients, long polls, streams and a burst
    # waiting for a busy plugin pin no thread; with the lean data path it also costs the least CPU per request
    # (`./dev bench`: ~0.87 ms per tiny GET vs ~1.6 ms for gthread, whose thread hand-offs dominate).
    # gthread: a pool of up to `web_threads` threads per web worker (started as needed); each request in
    # flight holds one, also while it waits in a plugin's line.
    web_worker_class: Literal["gthread", "gevent"] = "gevent"
    web_threads: int = Field(256, ge=1, le=1024)
    # Requests in flight to ONE plugin per web worker; 0 = automatic (gevent: 64; gthread: half the threads,
    # at most 32: the plugin serves a few at a time, the rest wait in the host's line, not in its backlog).
    plugin_max_inflight: int = Field(0, ge=0)
    # Requests to ONE plugin per web worker that wait for a free slot beyond those in flight, first come first
    # served, each at most `plugin_queue_wait` seconds (and never beyond the plugin's request timeout); only a
    # full queue or an expired wait answers 503 + Retry-After. -1 = automatic (gevent: 1024; gthread: what
    # leaves a quarter of the threads to the other plugins).
    plugin_queue: int = Field(-1, ge=-1)
    plugin_queue_wait: float = Field(10.0, ge=0)
    # Start-up handshake: a plugin must answer its health path within this deadline.
    start_timeout: float = Field(30.0, gt=0)
    # Liveness: probe every N seconds; kill after `probe_failures` consecutive failed probes.
    probe_interval: float = Field(5.0, gt=0)
    probe_timeout: float = Field(3.0, gt=0)
    probe_failures: int = Field(2, ge=1)
    stop_grace: float = Field(5.0, ge=0)
    # A request that finds its plugin starting or restarting waits up to this long before getting a 503.
    request_wait: float = Field(10.0, ge=0)
    # One line per request to a plugin in <home>/run/access_log/<name>.log (`host logs NAME --access`), rotated
    # at log_max_bytes like plugin output; no query strings (they carry secrets).
    access_log: bool = True
    # The public web tier's request series for /metrics (requests, durations, bytes, in flight).
    request_metrics: bool = True
    # /metrics on the admin listener without a token. Off: Prometheus sends a read-scope token
    # (`authorization: {credentials_file: ...}` in its scrape config).
    metrics_public: bool = False
    # Restart policy (host.supervisor.state.RestartPolicy): backoff from backoff_initial, doubling up to
    # backoff_max; the max_failures-th failure (crash, failed start or probe, dead worker) within
    # failure_window seconds quarantines. A failure counts for the whole window, however long the plugin ran.
    backoff_initial: float = Field(0.1, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    max_failures: int = Field(12, ge=1)
    failure_window: float = Field(600.0, gt=0)
    # Scale to zero: stop a plugin after this many idle seconds (0 = never), start it on the next request.
    idle_timeout: float = Field(0.0, ge=0)
    # Per-plugin uids when the host runs as root: from uid_base + 1 up, each unique on this machine (not only in
    # this home): allocated in uid_file, shared by every home, and never a uid /etc/passwd, /etc/group or a
    # running process already uses.
    uid_base: int = Field(700000, ge=1000)
    # The web tier's own unprivileged user when the host runs as root: a name or uid[:gid] (below uid_base).
    # Empty: the user `plugin-host-web` if /etc/passwd has one, else a uid (= gid) of this home's own from
    # uid_file, like a plugin's. Never root. A non-root host runs its web tier as itself.
    web_user: str = Field("", pattern=r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}(:[0-9]{1,10})?)?$")
    uid_file: Path = Path("/var/lib/plugin-host/uids.json")
    # Sandbox strength: "strict" refuses to start a plugin when a layer is missing; "weak" starts it anyway
    # with whatever layers exist and says so loudly in logs, `host list` and /healthz.
    sandbox: str = Field("strict", pattern="^(strict|weak)$")
    # Signed bundles (host.signing): "require" refuses an unsigned bundle; "warn" installs it with a risk penalty
    # and an "unsigned" badge; "off" neither checks signatures nor pins publishers.
    signatures: str = Field("warn", pattern="^(require|warn|off)$")
    # Publisher keys trusted before any install (host.trust): "name=ed25519:<base64>" entries, comma separated;
    # "*=<key>" trusts a key for every name. A pinned key (trust on first use) wins over this list.
    trusted_keys: str = ""
    # The check before each start that the install's files are as installed (host.integrity): "stat" hashes a
    # file only when its stat changed; "full" hashes every file on every start; "off" skips it.
    integrity: str = Field("stat", pattern="^(stat|full|off)$")
    # After an upgrade the previous instance stays up (not serving) this many seconds; if the new one exits or
    # fails its probes meanwhile, the previous one serves again and the registry goes back to it. 0 = off.
    upgrade_probation: float = Field(30.0, ge=0)
    # Earlier installs of each plugin kept on disk for `host rollback` (besides the live one).
    keep_installs: int = Field(2, ge=1, le=20)
    # Before an upgrade the data dir is snapshotted for `host rollback` when it holds at most this many MiB (0 =
    # never); the snapshot lives under <home>/snapshots/<name>/ as long as the install it belongs to.
    snapshot_max_mb: int = Field(64, ge=0)
    # Where the disk quota finds mkfs.ext4, resize2fs (e2fsprogs), mount, losetup and unshare (util-linux).
    disk_tools_path: str = "/usr/sbin:/usr/bin:/sbin:/bin"
    # Extra pip arguments for plugin installs (e.g. "--index-url https://mirror/simple").
    pip_args: str = ""
    # What installs a plugin's packages: "auto" = uv (the `uv` package installed with the host) when it can
    # express every index option, else pip; "uv" = uv or a clear error; "pip" = always pip. Both run confined.
    installer: Literal["auto", "uv", "pip"] = "auto"
    # Offline installs: pip takes every package from this directory of wheels and nothing else
    # (--no-index --find-links DIR; mounted read-only for the confined pip).
    wheelhouse: Path | None = None
    # The wheel cache all plugin installs of this home share (<home>/wheels, host.wheel_cache): verified binary
    # wheels the host fetched itself, read-only to the confined installer; its size in MiB (0 = no shared cache).
    wheel_cache_mb: int = Field(1024, ge=0)
    log_max_bytes: int = Field(5 * 1024 * 1024, ge=4096)
    # Audit events (registry `events`) older than this many days are deleted when `host serve` starts and once a
    # day while it runs; 0 keeps them forever.
    audit_retention_days: float = Field(90.0, ge=0)
    # Hooks (host.hooks). Event deliveries: the delay before each attempt in seconds (comma-separated; each
    # but the first gets ±20 % jitter); after the last failed attempt an event is a dead letter (`host hooks`).
    hook_retry_schedule: str = Field("0,5,30,300,1800", pattern=r"^\s*[0-9.]+(\s*,\s*[0-9.]+)*\s*$")
    hook_delivery_timeout: float = Field(10.0, gt=0)
    hook_concurrency: int = Field(2, ge=1, le=64, description="Deliveries in flight to one plugin.")
    # Filters: no filter may take longer than this, whatever its manifest says (seconds).
    hook_filter_deadline_max: float = Field(1.0, gt=0, le=60)
    # A filter failing this many times in a row is skipped (its on_error applied) for hook_breaker_cooldown s.
    hook_breaker_failures: int = Field(5, ge=1)
    hook_breaker_cooldown: float = Field(30.0, gt=0)
    # Request headers a request.before filter may add besides X-Filter-* (comma-separated names).
    hook_filter_headers: str = Field("", pattern=r"^[A-Za-z0-9,\s-]*$")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            if item != "*":
                ipaddress.ip_network(item)  # strict, as gunicorn: "10.0.0.1/24" is a mistake, not 10.0.0.0/24
        return ",".join(items)

    @field_validator("plugin_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if not value:
            return value
        value = value.lower().removesuffix(".")
        if not origins.DOMAIN.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name (e.g. plugins.example.com)")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> HostSettings:
        if not self.path_mode and not self.origin_domain:
            raise ValueError("with HOST_PATH_MODE=false plugins are reachable only on their own origins: set "
                             "HOST_PLUGIN_DOMAIN (e.g. plugins.example.com), or bind a loopback address")
        return self
