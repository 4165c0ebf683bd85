"""The web tier process: gunicorn (threaded workers) serving the host's Flask app, never as root.

Started by the supervisor as ``python -m host.webtier [--app public|admin] --listen-fd N --home-fd M [--user
UID:GID]`` with the HostSettings it validated in the environment (host.settings_view, so this process never
imports pydantic; run by hand without them, HostSettings reads the HOST_* variables): once for the public
listener (plugins) and, with an admin listener, once more for the admin app (host.admin.app), in its own process
on its own socket. The supervisor binds the listening socket (so ports below 1024 work) and opens the home
(O_PATH). This process starts as root only so that Python can load from wherever it is installed; it keeps the
installation reachable (host.web_mounts), then drops to the web user — setgroups([]), setresgid, setresuid,
no_new_privs, and proves root is gone — before gunicorn's arbiter starts, before the app is built and before any
byte is read from a client. gunicorn binds nothing: it serves the inherited socket. The home is reached through
/proc/self/fd/M, so a home below a directory the web user cannot enter works.

It asks the kernel to SIGKILL it if the supervisor dies (after the drop, which would clear that), so a killed
host never leaves a web tier behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

import host
from host import gunicorn_wire, loopfs, web_mounts
from host.app import create_app
from host.arenas import limit_malloc_arenas
from host.errors import HostError
from host.layout import Layout
from host.request_metrics import MULTIPROC_ENV, forget_live, forget_worker
from host.settings_view import received
from host.ws_relay import Gate

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)
# What gunicorn's gevent worker imports when it monkey-patches, right after the fork: imported by the arbiter,
# before it forks, they are shared by the workers instead of built in each (~4 MiB resident per worker, issue 12).
# Importing them patches nothing. Some are gevent's internals of one Python version: what is missing is skipped.
GEVENT_PATCH_MODULES = (
    "gevent.monkey", "gevent.monkey._patch_thread_common", "gevent.monkey._patch_thread_lt313", "gevent.events",
    "zope.event", "gevent.local", "gevent.thread", "gevent.threading", "gevent.select", "gevent.selectors",
    "gevent.ssl", "gevent.subprocess", "gevent.signal", "gevent.time", "gevent.queue", "concurrent.futures.thread",
    "_threading_local", "encodings.idna", "stringprep",
)
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def die_with_parent(parent: int) -> None:
    """SIGKILL us when ``parent`` (the supervisor) dies; exit at once if it already has."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` for good: no supplementary groups, real/effective/saved ids all changed, no
    capabilities, and nothing (setuid binaries, file capabilities) can give any of it back."""
    if 0 in (uid, gid):
        raise HostError("the web tier never runs as root (uid/gid 0)")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise HostError(f"the web tier did not become {uid}:{gid} (ids {os.getresuid()} {os.getresgid()})")
    if _capabilities() != 0:
        raise HostError("the web tier kept capabilities after dropping root")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise HostError("the web tier could become root again after dropping privileges")


def _capabilities() -> int:
    """Permitted | effective capability bits of this process."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return int(fields["CapPrm"], 16) | int(fields["CapEff"], 16)


def keep_python_reachable() -> None:
    """Before the drop: make sure the new uid can still import from this installation (host.web_mounts)."""
    paths = web_mounts.python_paths(skip=[os.getcwd()])  # -m puts the cwd first: not needed
    paths.append(os.path.dirname(host.__file__))  # editable installs import it through a finder, not sys.path
    spec = importlib.util.find_spec("manifests")  # the same for the manifest package, which is imported lazily
    if spec is not None and spec.origin:
        paths.append(os.path.dirname(spec.origin))
    try:
        covered = web_mounts.open_up(paths)
    except OSError as exc:
        closed = web_mounts.unreachable(paths)
        if closed:
            log.warning("web tier: %s; after dropping root it cannot read %s, so a lazy import may fail. Make "
                        "the Python installation readable by others (o+rx up to it)", exc, ", ".join(closed))
        return
    if covered:
        log.debug("web tier: private mount view over %s", ", ".join(covered))
        # That view copied every plugin disk image mounted on the machine: unneeded here, and each copy would
        # keep an uninstalled plugin's image and loop device alive for as long as the web tier runs.
        loopfs.drop_copies()


class WebTier(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: HostSettings, listen_fd: int | None = None, layout: Layout | None = None,
                 app: str = "public") -> None:
        self.settings = settings
        self.app = app
        self.listen_fd = listen_fd
        self.layout = layout
        # Created here, in the arbiter, so every worker it forks shares it: one WebSocket cap per plugin.
        self.websocket_gate = Gate()
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        opts: dict[str, Any] = {
            # The supervisor's socket; binding ourselves is only for running this module by hand.
            "bind": [f"fd://{self.listen_fd}"] if self.listen_fd is not None else [s.bind],
            # Who we are now (gunicorn's defaults were taken at import, as root): workers change nothing.
            "user": os.geteuid(),
            "group": os.getegid(),
            # The admin app serves a few operators: one worker; its threads wait on the supervisor.
            "workers": 1 if self.app == "admin" else s.web_workers,
            "threads": 8 if self.app == "admin" else s.web_threads,
            "worker_class": "gthread" if self.app == "admin" else s.web_worker_class,
            "timeout": 3600,  # streaming responses are long; the proxy enforces per-plugin timeouts
            "graceful_timeout": max(1, int(s.stop_grace)),
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "proc_name": "plugin-host-admin" if self.app == "admin" else "plugin-host-web",
            "control_socket_disable": True,
            # The arbiter builds the app (after the drop: main() drops before gunicorn starts) and its workers
            # fork from it, sharing its pages copy-on-write instead of each importing and building its own.
            "preload_app": True,
            # Forwarded headers only from the operator's front proxies (gunicorn's default trusts loopback).
            # One scheme header, the one the proxy sets; with no proxy, none, since gunicorn believes every
            # Unix-socket peer. No SCRIPT_NAME/PATH_INFO from anyone: the host is always mounted at "/".
            "forwarded_allow_ips": s.forwarded_allow_ips,
            "secure_scheme_headers": {"X-FORWARDED-PROTO": "https"} if s.forwarded_allow_ips else {},
            "forwarder_headers": "",
        }
        exits: list[Any] = []  # what the arbiter does when a worker died
        metrics = os.environ.get(MULTIPROC_ENV)  # set by main() for the public app only
        if metrics:
            # prometheus_client multiprocess mode (host.request_metrics): stale in-flight gauges go.
            opts["on_starting"] = lambda server: forget_live(Path(metrics))
            exits.append(lambda server, worker: forget_worker(Path(metrics), worker.pid))
        if self.app == "public" and s.web_worker_class == "gevent" and s.web_workers > 1:
            # Keep-alive connections spread evenly over the workers (host.web_balance).
            from host import web_balance

            web_balance.BalancedGeventWorker.counts = web_balance.Counts()
            opts["worker_class"] = "host.web_balance.BalancedGeventWorker"
            opts["pre_fork"], opts["post_fork"] = web_balance.pre_fork, web_balance.post_fork
            exits.append(web_balance.child_exit)
        if exits:
            def child_exit(server: Any, worker: Any) -> None:
                for on_exit in exits:
                    on_exit(server, worker)

            opts["child_exit"] = child_exit
        for key, value in opts.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app; with preload_app, once, in the arbiter, before it forks any worker."""
        if self.app == "admin":
            from host.admin.app import create_admin_app

            wsgi = create_admin_app(self.settings, self.layout)
        else:
            wsgi = create_app(self.settings, self.layout, self.websocket_gate)
            if self.settings.web_worker_class == "gevent":
                preimport(GEVENT_PATCH_MODULES)
                find_gevent_plugins_once()
        # Jinja compiles a template when it first renders it, in whichever worker: ~3 MiB of private memory in
        # each worker for the host's index page. Compiled here, they are shared like the rest of the app.
        for name in wsgi.jinja_env.list_templates(extensions=["html"]):
            wsgi.jinja_env.get_template(name)
        # Everything built so far lives as long as the process: out of the collector's sight, so that a
        # worker's collections do not write to (and so copy) the pages it shares with the arbiter.
        gc.collect()
        gc.freeze()
        # gunicorn's logger: the one this process's log goes through (into the host's log)
        logging.getLogger("gunicorn.error").info("%s app built by pid %d as uid %d; workers fork from it",
                                                 self.app, os.getpid(), os.geteuid())
        return wsgi


def preimport(names: tuple[str, ...]) -> None:
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def find_gevent_plugins_once() -> None:
    """gevent looks up its plugins (entry points: every installed distribution's metadata read and parsed) at
    each event of a monkey-patch, some 25 times in each worker right after the fork: ~2 MiB of each worker's
    private memory, and as much of the arbiter's pages. Looked up here, once, before the fork, the same plugins
    are called with the same events."""
    from importlib import metadata

    import gevent.events

    groups = {entry.group for dist in metadata.distributions() for entry in dist.entry_points
              if entry.group.startswith("gevent.plugins.")}  # usually none
    found = {group: list(metadata.entry_points(group=group)) for group in groups}

    def notify_and_call_entry_points(event: Any) -> None:
        gevent.events.notify(event)
        for plugin in found.get(event.ENTRY_POINT_NAME, ()):
            plugin.load()(event)

    if hasattr(gevent.events, "notify_and_call_entry_points"):  # where gevent.monkey finds it, at each event
        gevent.events.notify_and_call_entry_points = notify_and_call_entry_points


def load_settings() -> HostSettings:
    """The settings the supervisor validated (host.settings_view: no pydantic in this process); run by hand
    without them, HostSettings from the HOST_* variables."""
    settings = received()
    if settings is None:
        from host.settings import HostSettings

        settings = HostSettings()
    return settings


def _arguments(argv: list[str]) -> argparse.Namespace:
    def ids(text: str) -> tuple[int, int]:
        uid, _, gid = text.partition(":")
        return int(uid), int(gid or uid)

    parser = argparse.ArgumentParser(prog="python -m host.webtier")
    parser.add_argument("--app", choices=("public", "admin"), default="public",
                        help="public: plugins, / and /healthz; admin: the admin API, UI and /metrics")
    parser.add_argument("--listen-fd", type=int, help="listening socket inherited from the supervisor")
    parser.add_argument("--home-fd", type=int, help="O_PATH fd of the home inherited from the supervisor")
    parser.add_argument("--user", type=ids, help="UID[:GID] to drop to before serving (root hosts)")
    return parser.parse_args(argv)


def main() -> None:
    parent = os.getppid()
    limit_malloc_arenas()  # before gunicorn: every worker it forks has a pool of threads
    args = _arguments(sys.argv[1:])
    if args.user is not None:
        keep_python_reachable()
        drop_privileges(*args.user)
    elif os.geteuid() == 0:
        raise SystemExit("host.webtier: refusing to serve as root; the supervisor passes --user UID:GID")
    die_with_parent(parent)
    settings = load_settings()
    layout = Layout(Path(f"/proc/self/fd/{args.home_fd}")) if args.home_fd is not None else None
    if args.app == "public" and layout is not None and settings.request_metrics:
        # Before prometheus_client is imported (host.request_metrics imports it when the app is built): the
        # workers' request series go to files the admin app adds up. /proc/self: each worker's own fd.
        os.environ[MULTIPROC_ENV] = str(layout.metrics)
    sys.argv = sys.argv[:1]  # gunicorn must not parse our arguments
    # A response's head and first body piece in one send; with gevent, large bodies spliced (host.gunicorn_wire)
    gunicorn_wire.install(splice=args.app == "public" and settings.web_worker_class == "gevent")
    WebTier(settings, args.listen_fd, layout, args.app).run()


if __name__ == "__main__":
    main()
