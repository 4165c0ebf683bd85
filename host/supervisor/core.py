"""The supervisor process (`host serve`): owns every plugin worker and the web tier, serves the control
socket, reconciles desired state from the registry, and stops everything on SIGTERM/SIGINT."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from host import identity, launch
from host.arenas import Trimmer, limit_malloc_arenas, release_free_memory
from host.egress.point import EgressPoint
from host.errors import HostError
from host.hooks import outbox
from host.hostapi.server import HostApi
from host.layout import PARTIAL_MARKER, Layout
from host.quota import release_all
from host.registry import Registry
from host.supervisor import leftovers, metrics
from host.supervisor.admin import AdminOps, prepare_uploads
from host.supervisor.control_server import ControlServer
from host.supervisor.hooks import SupervisorHooks
from host.supervisor.process import Children, children_of, process_group, start_time
from host.supervisor.state import SERVING
from host.supervisor.web import WEB_OPS, RoutesPublisher, bind_listener, public_view, web_env
from host.supervisor.worker import PluginWorker
from host.webuser import web_user

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)
WEB_RESTART_DELAY = (0.1, 5.0)  # first and maximum delay between web tier restarts
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of our subtree (a plugin's processes whose runner died) get re-parented to us rather than to
    init, where nobody would ever kill them; :meth:`Supervisor.reap_orphans` finishes them off."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Supervisor:
    def __init__(self, settings: HostSettings, *, web: bool = True) -> None:
        self.settings = settings
        self.layout = Layout(settings.home_dir)
        self.layout.ensure()
        self.registry = Registry(self.layout.registry)
        self.web_enabled = web
        self.workers: dict[str, PluginWorker] = {}
        self.children = Children()
        self._trimmer = Trimmer()
        self._lock = threading.Lock()
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_w, False)
        # The web tiers by app ("public": plugins; "admin": the admin listener), each with its own listener,
        # restart delay and start time.
        self.tiers: dict[str, subprocess.Popen[bytes]] = {}
        self.listeners: dict[str, socket.socket] = {}  # bound by us, inherited by every web tier we start
        self._web_delay: dict[str, float] = {}
        self._web_started: dict[str, float] = {}
        self.started = time.time()
        # Root hosts run the web tier as its own user (HostError here if HOST_WEB_USER is unusable).
        self.web_user = web_user(settings)
        self.routes = RoutesPublisher(self.layout.routes, self.web_user)
        self._home_lock: IO[str] | None = None  # run/supervisor.lock, flocked while we serve
        self._home_fd: int | None = None  # how the web tier reaches the home once it is no longer root
        # Root hosts give every plugin with a network grant its own namespace behind the egress point.
        self.egress = (EgressPoint(launch.egress_uid(settings), self._egress_refused, self.children)
                       if os.geteuid() == 0 else None)
        self.egress_refusals: dict[str, int] = {}
        # Plugins' host-API sockets and tokens (host.hostapi), and the secret user sessions and assertions are
        # signed with (host.identity; the web tier reads the same file).
        self.host_api = HostApi(self.registry, self.layout, settings.host_api_rate, settings.host_api_burst)
        self.identity_secret = identity.load_or_create_secret(self.layout.run / identity.SECRET_FILE,
                                                              self.web_user.gid if self.web_user else None)
        self._audit_pruned: float | None = None  # monotonic time of the last audit retention pass
        self._egress_audited: dict[tuple[str, str, str], float] = {}
        self.hooks = SupervisorHooks(self)  # event delivery, the filter table (host.hooks)
        self.backend = "auto"  # the runner backend of every plugin start, probed once in run()

    @property
    def web(self) -> subprocess.Popen[bytes] | None:
        """The public web tier."""
        return self.tiers.get("public")

    # -- control requests (any thread) ------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "status":
            return self.status()
        if op == "reload":
            self.reconcile()
            return {"ok": True}
        if op in ("start", "stop", "restart", "wake"):
            name = str(req.get("name", ""))
            self.reconcile()
            worker = self.workers.get(name)
            if worker is None:
                raise HostError("is not installed or not enabled", plugin=name)
            wait = req.get("wait")
            why = str(req.get("why") or "")[:200] or None  # what stopped it, for its history
            worker.submit(op, wait=float(wait) if wait is not None else None, why=why)
            return {"ok": True, "plugin": worker.snapshot()}
        raise HostError(f"unknown op {op!r}")

    def status(self) -> dict[str, Any]:
        with self._lock:
            workers = dict(self.workers)
        return {
            "supervisor": {"pid": os.getpid(), "uptime": round(time.time() - self.started, 1)},
            # what the plugins' "failures" count towards (host.supervisor.state.RestartPolicy)
            "policy": {"max_failures": self.settings.max_failures, "failure_window": self.settings.failure_window},
            # where plugins are reached: `host install` prints each plugin's URLs from it
            "serving": {"bind": self.settings.bind, "plugin_domain": self.settings.origin_domain,
                        "path_mode": self.settings.path_mode},
            "web": {"pid": self.web.pid if self.web and self.web.poll() is None else None,
                    "admin_pid": self._tier_pid("admin"), "admin_bind": self.settings.admin_bind or None,
                    "uid": self.web_user.uid if self.web_user else os.geteuid(),
                    "gid": self.web_user.gid if self.web_user else os.getegid()},
            "plugins": {name: {**w.snapshot(), "egress_refused": self.egress_refusals.get(name, 0)}
                        for name, w in sorted(workers.items())},
        }

    def _egress_refused(self, event: dict[str, Any]) -> None:
        """A refused egress connection: counted per plugin, logged by the egress process, and audited
        (the first per destination and reason in a minute, so a loop cannot flood the registry)."""
        name = str(event.get("plugin", ""))
        key = (name, str(event.get("dest")), str(event.get("reason")))
        now = time.monotonic()
        with self._lock:
            self.egress_refusals[name] = self.egress_refusals.get(name, 0) + 1
            last = self._egress_audited.get(key, -61.0)
            if now - last < 60:
                return
            self._egress_audited[key] = now
        self.registry.record(name, "egress_refused", dest=key[1], reason=key[2])

    def handle_web(self, req: dict[str, Any]) -> dict[str, Any]:
        """The web socket: only what the web tier needs, answered with the public view of plugins."""
        op = req["op"]
        if op == "status":
            with self._lock:
                workers = dict(self.workers)
            return {"plugins": {name: public_view(w.snapshot()) for name, w in sorted(workers.items())}}
        if op == "active":
            names = req.get("names")
            if not isinstance(names, list):
                raise HostError("'active' needs a list of plugin names")
            with self._lock:
                for name in names:
                    worker = self.workers.get(str(name))
                    if worker is not None:
                        worker.mark_active()
            return {"ok": True}
        if op == "filter_tripped":
            return self.hooks.filter_tripped(req)
        if op == "wake":
            wait = min(max(0.0, float(req.get("wait") or 0.0)), self.settings.request_wait)
            reply = self.handle({"op": "wake", "name": str(req.get("name", "")), "wait": wait})
            return {"ok": True, "plugin": public_view(reply["plugin"])}
        if op == "user_login":
            # The host's own login page (host.app): the web tier learns yes or no, never a password hash.
            from host import users

            ok = users.login(self.registry, str(req.get("name", ""))[:128], str(req.get("password", ""))[:1024],
                             str(req.get("client", ""))[:64])
            return {"ok": ok}
        raise HostError(f"op {op!r} is not allowed on the web socket (only {', '.join(WEB_OPS)})")

    def prune_audit(self) -> None:
        """Audit retention (HOST_AUDIT_RETENTION_DAYS): drop older events when we start, then once a day."""
        now = time.monotonic()
        if self._audit_pruned is not None and now - self._audit_pruned < 86400:
            return
        self._audit_pruned = now
        try:
            gone = self.registry.prune_events(self.settings.audit_retention_days)
            outbox.prune(self.registry, self.settings.audit_retention_days)  # delivered events, old dead letters
        except Exception:  # a busy registry must not stop the host; tomorrow's pass catches up
            log.exception("cannot prune the audit log")
            return
        if gone:
            log.info("audit log: removed %d events older than %g days", gone, self.settings.audit_retention_days)

    def publish_routes(self) -> None:
        """Republish the web tier's routing snapshot if the registry changed (cheap when it did not)."""
        try:
            records = self.registry.all()
            self.routes.publish(records)
            self.hooks.publish(records)
        except Exception:  # a busy or broken registry must not end the main loop; the next tick retries
            log.exception("cannot publish the routing snapshot %s", self.layout.routes)

    def _plugin_live(self) -> None:
        """An instance went live (a worker's thread): its new hook secret into the filter table now, and its
        pending events out, rather than at the next tick."""
        self.publish_routes()
        self.hooks.dispatcher.wake()

    def reconcile(self) -> None:
        """Make the set of workers and their desired state match the registry."""
        with self._lock:
            records = {r.name: r for r in self.registry.all()}
            for name, rec in records.items():
                worker = self.workers.get(name)
                if worker is None:
                    worker = PluginWorker(name, self.settings, self.registry, children=self.children,
                                          egress=self.egress)
                    worker.web_user = self.web_user
                    worker.host_api, worker.identity_secret = self.host_api, self.identity_secret
                    worker.backend = self.backend
                    worker.on_live = self._plugin_live
                    self.workers[name] = worker
                    worker.start()
                if rec.enabled and not worker.want_running:
                    # "enable", not "start": a plugin that scales to zero waits for its first request.
                    worker.submit("enable")
                elif not rec.enabled and worker.want_running:
                    worker.submit("stop", why="disabled")
                elif rec.enabled and worker.lc.state in SERVING and worker.instance is not None \
                        and worker.instance.spec.install_id != rec.install_id:
                    # A new version was installed: switch with no downtime. "upgrade" re-checks the install
                    # when it runs, so reconciling twice while the switch is under way restarts once.
                    worker.submit("upgrade")
            for name in set(self.workers) - set(records):
                self.workers.pop(name).submit("shutdown", why="uninstalled")
                self.host_api.close(name)
            # Before any caller (`host install`, enable, disable) hears back: the next request sees it.
            self.routes.publish(records.values())
        self.hooks.publish(records.values())

    # -- main loop --------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Take the home's lock and bind the web port: the two ways `host serve` fails at once, before it has
        started or logged anything (a port in use is one line and exit 1, not a web tier restarting for
        ever). Idempotent; :meth:`run` calls it if the caller did not."""
        if self._home_lock is not None:
            return
        lock = open(self.layout.run / "supervisor.lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self.web_enabled:
                self._open_web_listener()
        except BlockingIOError as exc:
            lock.close()
            raise HostError(f"another `host serve` is already running for {self.layout.home}") from exc
        except BaseException:
            lock.close()
            raise
        self._home_lock = lock

    def _sweep_killed_installs(self) -> None:
        """Remove what a `host install` killed mid-way left (its half-built install dir and, for a first install,
        its data dir, disk image and run dir), as its next install would. Under the installer's home lock; builds
        still running are left alone. The installer is imported only when a marker is there."""
        plugins = self.layout.plugins
        if not plugins.is_dir() or not any(plugins.glob(f"*/*/{PARTIAL_MARKER}")):
            return
        from host import installer

        with installer.home_lock(self.layout):
            gone = installer.sweep(self.layout, self.registry)
        if gone:
            log.info("removed half-finished installs of a killed `host install`: %s", ", ".join(map(str, gone)))

    def run(self) -> int:
        limit_malloc_arenas()  # before our threads: a worker thread per plugin, the control servers
        self.bind()
        assert self._home_lock is not None
        self.host_api.forget_leftovers()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if not become_subreaper():
            log.warning("cannot become a child subreaper; orphaned plugin processes would go to init")
        control = ControlServer(self.layout.control_socket, self.handle)
        control.start()
        # A non-root host's web tier is its own user: owner-only, like everything else it shares.
        web_mode, web_group = (0o660, self.web_user.gid) if self.web_user else (0o600, None)
        web_api = ControlServer(self.layout.web_socket, self.handle_web, mode=web_mode, group=web_group)
        web_api.start()
        # The admin web tier's only way to act: every op carries a token or session the supervisor checks.
        admin_api = ControlServer(self.layout.admin_socket, AdminOps(self).handle, mode=web_mode, group=web_group)
        admin_api.start()
        prepare_uploads(self.layout, self.web_user)
        log.info("supervisor %s serving %s", os.getpid(), self.layout.home)
        # Disk images a killed host left mounted stay mounted for the plugins still installed (adopted as
        # they are); those of plugins uninstalled since are unmounted.
        self._sweep_killed_installs()
        installed = frozenset(r.name for r in self.registry.all())
        stale = release_all(self.layout, keep=installed)
        if stale:
            log.info("unmounted the disk images of uninstalled plugins: %s", ", ".join(stale))
        gone = leftovers.clean(self.settings, installed)
        if gone:
            log.info("removed what a killed host or runner left behind: %s", ", ".join(gone))
        self.prune_audit()
        metrics.prepare(self.layout, self.web_user)  # before the web tier starts counting
        self.backend = launch.serving_backend(self.settings)
        log.info("plugins start with the %s sandbox backend", self.backend)
        try:
            self.reconcile()
            # The admin tier waits for its listener's first connection (_loop): a web tier of its own, idle
            # most of the time, costs ~45 MiB of resident memory on a host nobody administers right now.
            self._start_web("public")
            if "admin" in self.listeners:
                log.info("admin listener on http://%s (its web tier starts with the first connection)",
                         self.settings.admin_bind)
            self.hooks.start()
            release_free_memory()  # what starting up freed (migrations, leftovers, the first reconcile)
            self._loop()
        finally:
            log.info("shutting down")
            self.hooks.close()
            self._stop_web()
            self._shutdown_workers()
            self.host_api.close_all()
            release_all(self.layout)  # the plugins' disk images (lazily where a dying instance still holds one)
            if self.egress is not None:
                self.egress.close()
            admin_api.close()
            web_api.close()
            control.close()
            self._close_web_listener()
            self._home_lock.close()
            self._home_lock = None
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        # Handlers only enqueue; the main loop acts (no logging here).
        try:
            os.write(self._sig_w, bytes([signum]))
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        while True:
            web_fds = [os.pidfd_open(p.pid) for p in self.tiers.values() if p.poll() is None]
            # Listeners whose tier never started: readable = a client is waiting in the backlog.
            waiting = {sock.fileno(): app for app, sock in self.listeners.items() if app not in self.tiers}
            try:
                ready, _, _ = select.select([self._sig_r, *web_fds, *waiting], [], [], 1.0)
            finally:
                for fd in web_fds:
                    os.close(fd)
            if self._sig_r in ready:
                sig = os.read(self._sig_r, 1)
                log.info("received %s", signal.Signals(sig[0]).name)
                return
            for fd, app in waiting.items():
                if fd in ready:
                    self._start_web(app)  # it accepts the waiting connection once it serves
            self.reap_orphans()
            with self.children.lock:
                alive = len(self.children.pids)
            self._trimmer.look(alive)  # a plugin stopped or fell asleep: give its freed heap back
            if self.egress is not None:
                self.egress.check()
            self.publish_routes()
            self.prune_audit()
            for app in self.listeners:
                tier = self.tiers.get(app)
                if tier is not None and tier.poll() is not None:  # once started, a tier is kept running
                    self._web_died(app)

    def reap_orphans(self) -> int:
        """Kill and reap the processes we adopted as subreaper: they are leftovers of a plugin (or web tier)
        whose parent died without taking them along. Reaping by pid never steals a Popen's exit status.

        Not our own short-lived helpers (quota tools, probes: subprocess.run in a worker thread, reaped by
        it): they stay in our process group, while everything we adopt comes from an instance, the web tier
        or the egress process, which all lead groups of their own. An instance's sandbox init, adopted when its
        bwrap exits first (:attr:`Children.expected`), is reaped the same way but not reported: it is no leftover."""
        mine = os.getpgrp()
        with self.children.lock:
            adopted = {pid for pid in children_of(os.getpid()) - self.children.pids if process_group(pid) != mine}
            expected = self.children.expected
            inits = {pid for pid in adopted if pid in expected and expected[pid] == start_time(pid)}
            for pid, st in list(expected.items()):
                if pid in inits or start_time(pid) != st:  # adopted now, or gone (bwrap reaped it)
                    del expected[pid]
            for pid in adopted:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in adopted:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if adopted - inits:
            log.warning("killed %d orphaned process(es) left behind by a dead plugin or web tier: %s",
                        len(adopted - inits), sorted(adopted - inits))
        return len(adopted - inits)

    # -- web tier ---------------------------------------------------------------------------------------

    def _tier_pid(self, app: str) -> int | None:
        tier = self.tiers.get(app)
        return tier.pid if tier is not None and tier.poll() is None else None

    def _open_web_listener(self) -> None:
        self.listeners["public"] = bind_listener(self.settings.bind)
        if self.settings.admin_bind:
            try:
                self.listeners["admin"] = bind_listener(self.settings.admin_bind)
            except HostError as exc:
                self._close_web_listener()
                raise HostError(f"admin listener (--admin-bind, HOST_ADMIN_BIND; \"\" = none): {exc}") from exc
        # O_PATH: the web tier can walk from it into run/ even when a directory above the home is closed to
        # its uid (a home under /root, a 0700 temp dir); it grants nothing the home's own modes do not.
        self._home_fd = os.open(self.layout.home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _close_web_listener(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        if self._home_fd is not None:
            os.close(self._home_fd)
            self._home_fd = None

    def _start_web(self, app: str = "public") -> None:
        assert self._home_fd is not None
        fds = (self.listeners[app].fileno(), self._home_fd)
        argv = [sys.executable, "-m", "host.webtier", "--app", app, "--listen-fd", str(fds[0]),
                "--home-fd", str(fds[1])]
        if self.web_user is not None:
            argv += ["--user", f"{self.web_user.uid}:{self.web_user.gid}"]
        with self.children.lock:
            # Its own session: a terminal's Ctrl-C reaches only the supervisor, which then stops the web
            # tier and the plugins in order (instead of the web tier dying first and being restarted).
            # It starts as root only to load Python and drop (host.webtier): before gunicorn starts.
            tier = subprocess.Popen(argv, env=web_env(self.settings), pass_fds=fds,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.tiers[app] = tier
            self.children.pids.add(tier.pid)
        self._web_started[app] = time.monotonic()
        bind = self.settings.admin_bind if app == "admin" else self.settings.bind
        log.info("%s web tier %s on http://%s as uid %d", app, tier.pid, bind,
                 self.web_user.uid if self.web_user else os.geteuid())

    def _web_died(self, app: str = "public") -> None:
        tier = self.tiers.get(app)
        rc = tier.returncode if tier else None
        delay = self._web_delay.get(app, WEB_RESTART_DELAY[0])
        if tier is not None and time.monotonic() - self._web_started.get(app, 0.0) > 30:
            delay = WEB_RESTART_DELAY[0]  # it had been up a while: restart promptly
        if tier is not None:
            with self.children.lock:
                self.children.pids.discard(tier.pid)
        log.error("%s web tier exited (%s); restarting it in %.1fs (plugins keep running)", app, rc, delay)
        self.registry.record(None, "web_restarted", returncode=rc, app=app)
        time.sleep(delay)
        self._web_delay[app] = min(delay * 2, WEB_RESTART_DELAY[1])
        self._start_web(app)

    def _stop_web(self) -> None:
        tiers = [t for t in self.tiers.values() if t.poll() is None]
        for tier in tiers:
            tier.terminate()
        for tier in tiers:
            try:
                tier.wait(self.settings.stop_grace + 5)
            except subprocess.TimeoutExpired:
                tier.kill()
                tier.wait()

    def _shutdown_workers(self) -> None:
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.submit("shutdown")
        deadline = time.monotonic() + self.settings.stop_grace + 10
        for w in workers:
            w.join(max(0.1, deadline - time.monotonic()))
