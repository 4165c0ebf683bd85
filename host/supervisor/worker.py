"""One thread per plugin drives its Lifecycle: start, watch, probe, back off, quarantine, restart, stop.

A plugin that hangs or crash-loops only ever blocks its own thread.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host import identity, integrity, launch
from host.egress.point import EgressPoint
from host.egress.rules import Grant
from host.errors import IntegrityError, MissingSettings, QuotaError
from host.exits import Cause, ExitInfo, Limits, classify, host_killed, worker_death
from host.hooks.events import emit_quietly, host_event
from host.hostapi.server import HostApi
from host.launch import LaunchSpec
from host.layout import Layout
from host.quota import FullAlarm, disk_usage, refusal, with_disk_layer
from host.registry import PluginRecord, Registry
from host.supervisor.health import INTERRUPTED, not_ready, probe, unhealthy
from host.supervisor.logs import LogSink
from host.supervisor.process import Children, Instance, Readiness
from host.supervisor.state import (
    SERVING,
    Abandoned,
    Failed,
    Lifecycle,
    Ready,
    Replaced,
    ReplaceFailed,
    RestartPolicy,
    RolledBack,
    Start,
    State,
    Stop,
    Stopped,
    Tick,
    WorkerDied,
)
from host.supervisor.web import sandbox_summary
from host.webuser import WebUser, share_path
from sandbox_runner.errors import SETUP_EXIT_CODES

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)


# How long to wait for an exited instance's output pipe to reach EOF, so its last words make the report.
DRAIN_OUTPUT = 0.5
# Output lines kept in a failure report: enough to still hold the exception line of a traceback that
# gunicorn follows with its own shutdown chatter.
TAIL = 10
# A vanished socket is usually a plugin on its way out; wait this long for the exit before killing it.
SOCKET_GONE_GRACE = 1.0


@dataclass
class Command:
    # enable   desired state from the registry: run it (unless it is asleep: scale to zero waits for a request)
    # start    an operator asked: run it now, even out of quarantine or backoff
    # wake     a request arrived for a plugin that scaled to zero
    # restart  zero-downtime replacement (or a fresh start when not running; clears quarantine)
    # upgrade  switch to a newly installed version with no downtime (once per install)
    # stop | shutdown
    op: str
    done: threading.Event | None = None
    why: str | None = None  # stop/shutdown: what the history says stopped it


class EgressUnavailable(Exception):
    """A plugin with a network grant cannot get its own namespace here; it must not start (fail closed)."""


class PluginWorker(threading.Thread):
    def __init__(self, name: str, settings: HostSettings, registry: Registry,
                 clock: Callable[[], float] = time.monotonic, children: Children | None = None,
                 egress: EgressPoint | None = None) -> None:
        super().__init__(name=f"plugin-{name}", daemon=True)
        self.plugin = name
        self.settings = settings
        self.registry = registry
        self.layout = Layout(settings.home_dir)
        self.lc = Lifecycle(
            RestartPolicy(initial=settings.backoff_initial, cap=settings.backoff_max,
                          max_failures=settings.max_failures, window=settings.failure_window),
            clock=clock,
        )
        self.sink = LogSink(self.layout.logs(name), name, settings.log_max_bytes)
        self.children = children or Children()
        self.egress = egress
        self.instance: Instance | None = None
        self.generation = 0
        self.want_running = False
        self.exiting = False
        self._cmds: deque[Command] = deque()
        self._cmd_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes the loop: never block a writer
        self._waiters: list[threading.Event] = []  # released when the plugin is RUNNING or gives up
        self._drains: list[threading.Thread] = []  # old instances finishing their requests after a restart
        self._probe_failures = 0
        self._next_probe = 0.0
        self._disk = FullAlarm()
        self._disk_applied: bool | None = None  # did the last spawn get its disk image (None: unknown)
        self._failed_upgrade: str | None = None
        # After an upgrade: the previous instance, still up but not serving, until the probation ends
        self._standby: Instance | None = None
        self._probation_until = 0.0
        self._live_since_wall = 0.0
        self._idle_timeout_cached = 0.0
        self.last_active = 0.0  # wall clock of the web tier's last "active" for this plugin (scale to zero)
        self.sandbox: dict[str, Any] | None = None  # what the runner applied to the live instance
        self.web_user: WebUser | None = None  # set by the supervisor, which resolves it once
        self.host_api: HostApi | None = None  # set by the supervisor: plugins' host-API sockets and tokens
        self.identity_secret: bytes | None = None  # set by the supervisor: keys of users:read plugins derive from it
        self.backend = "auto"  # set by the supervisor: the runner backend it probed once (launch.serving_backend)
        # Scale to zero: asleep = wanted, but stopped until the next request wakes it.
        self.asleep = self.idle_timeout() > 0
        self.quarantines = 0  # times it was quarantined since the host started (/metrics)
        self._was_ready = False  # it served once since the host started: the next start is a restart (event)
        # Called (in this thread) when an instance goes live: the supervisor republishes the filter table (the
        # new instance has a new hook secret) and wakes the event dispatcher.
        self.on_live: Callable[[], None] | None = None
        self.start_seconds: float | None = None  # how long its last instance took to be ready (/metrics)

    # -- called from other threads ----------------------------------------------------------------------

    def submit(self, op: str, wait: float | None = None, why: str | None = None) -> None:
        done = threading.Event() if wait is not None else None
        with self._cmd_lock:
            self._cmds.append(Command(op, done, why))
        self._wake()
        if done is not None:
            done.wait(wait)

    def snapshot(self) -> dict[str, Any]:
        inst = self.instance
        last = self.lc.last_exit
        return {
            "name": self.plugin,
            "state": str(self.lc.state),
            # live_pid, not poll(): poll() may reap and close the pidfd the worker thread is selecting on.
            "pid": inst.live_pid if inst else None,
            "asleep": self.asleep,
            "restarts": self.lc.restarts,
            "reason": self.lc.reason,  # why it is not simply running; None once it runs again
            "failures": len(self.lc.failures),  # in the failure window, counting towards quarantine
            "last_exit": None if last is None else {
                "cause": str(last.cause), "reason": last.reason, "returncode": last.returncode,
                "ran_for": last.ran_for, "worker": last.worker, "stderr": list(last.stderr_tail)},
            "up_for": round(time.time() - self._live_since_wall, 1) if inst is not None and self._live_since_wall
            else None,
            "retry_in": round(max(0.0, self.lc.backoff_until - self.lc.clock()), 2)
            if self.lc.state == State.BACKOFF else None,
            "install_id": inst.spec.install_id if inst else None,  # what is actually serving
            "sandbox": self.sandbox,
        }

    def mark_active(self) -> None:
        """The web tier proxied a request to this plugin (it says so over the web socket, at most once a
        second per plugin and web worker)."""
        self.last_active = time.time()

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.sweep_run_dir()
            self._loop()
        except Exception as exc:
            log.exception("%s: supervisor thread crashed; the plugin stays stopped until `host restart`",
                          self.plugin)
            self._stop_instance("the supervisor thread failed")
            self.lc.transition(Abandoned(f"supervisor error: {exc.__class__.__name__}: {exc}"))
            try:
                self.registry.record(self.plugin, "supervisor_error", reason=self.lc.reason)
            except Exception:
                log.exception("%s: cannot record the supervisor error", self.plugin)
        finally:
            for t in self._drains:
                t.join(self.settings.stop_grace + 2)
            self._release_waiters()

    def sweep_run_dir(self) -> None:
        """Remove the sockets a previous (killed) supervisor left behind, and the public symlink: a stale
        socket would otherwise look like a plugin that refuses connections."""
        run_dir = self.layout.run_dir(self.plugin)
        stale = list(run_dir.glob("*.sock"))
        if self.layout.socket(self.plugin).is_symlink():
            stale.append(self.layout.socket(self.plugin))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("%s: removed %d stale file(s) from a previous run", self.plugin, len(stale))

    def _loop(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """One turn of the loop: act on commands, then on the state. False once the worker is done."""
        self._drain()
        st = self.lc.state
        if self.exiting and st in (State.STOPPED, State.QUARANTINED):
            return False
        if st == State.STOPPED:
            if self.want_running and not self.asleep:
                self.lc.transition(Start())
                self._start()
            else:
                self._sleep(None)
        elif st == State.BACKOFF:
            if not self.want_running:
                self.lc.transition(Stop())
                self.lc.transition(Stopped())
            elif self.lc.transition(Tick()) == State.STARTING:
                self._start()
            else:
                self._sleep(self.lc.backoff_until - self.lc.clock())
        elif st in SERVING:
            self._watch()
        else:  # QUARANTINED: wait for an operator
            self._release_waiters()
            self._sleep(None)
        return True

    def _drain(self) -> None:
        while True:
            with self._cmd_lock:
                if not self._cmds:
                    return
                cmd = self._cmds.popleft()
            self._handle(cmd)

    def _handle(self, cmd: Command) -> None:
        op = cmd.op
        if op == "enable":
            self.want_running = True
        elif op == "wake":
            # Only ends the sleep: a wake never starts a disabled plugin nor a quarantined one.
            self.asleep = False
        elif op == "start":
            self.want_running = True
            self.asleep = False
            if self.lc.state in (State.QUARANTINED, State.BACKOFF):
                self.lc.transition(Start(operator=True))
                self._start()
        elif op == "stop":
            self.want_running = False
            self._stop_instance(cmd.why or "disabled")
        elif op == "shutdown":
            self.want_running = False
            self.exiting = True
            self._stop_instance(cmd.why or "the host is shutting down")
        elif op == "upgrade":
            # Once per new install: a version that failed to come up is retried by `host restart`, not by
            # every reconcile.
            rec = self._record()
            if self.lc.state in SERVING and self.instance is not None and rec is not None \
                    and rec.install_id not in (self.instance.spec.install_id, self._failed_upgrade) \
                    and not self._replace(upgrade=True):
                self._failed_upgrade = rec.install_id
        elif op == "restart":
            self.want_running = True
            self.asleep = False
            if self.lc.state in SERVING:
                self._replace()
            elif self.lc.state in (State.QUARANTINED, State.BACKOFF, State.STOPPED):
                self.lc.transition(Start(operator=True))
                self._start()
        if cmd.done is not None:
            if op in ("start", "wake", "restart") and self.want_running \
                    and self.lc.state not in (*SERVING, State.QUARANTINED):
                # Released once it is running or gives up; concurrent wakes all wait for the ONE start.
                self._waiters.append(cmd.done)
            else:
                cmd.done.set()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def _sleep(self, timeout: float | None) -> None:
        select.select([self._wake_r], [], [], None if timeout is None else max(0.0, timeout))
        self._consume_wake()

    def _consume_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _cancelled(self) -> bool:
        return self._stop_pending() is not None

    def _stop_pending(self) -> str | None:
        """Why a queued stop or shutdown will stop the plugin (None: none is queued)."""
        with self._cmd_lock:
            for c in self._cmds:
                if c.op in ("stop", "shutdown"):
                    return c.why or ("disabled" if c.op == "stop" else "the host is shutting down")
        return None

    # -- starting ---------------------------------------------------------------------------------------

    def _record(self) -> PluginRecord | None:
        return self.registry.get(self.plugin)

    def _spawn(self) -> Instance | ExitInfo:
        rec = self._record()
        if rec is None:
            return ExitInfo(None, True, "not installed", setup_failure=True, cause=Cause.SETUP)
        self.generation += 1
        instance, issued = str(self.generation), False
        try:
            self._check_integrity(rec)
            spec = launch.build(self.settings, rec, self.generation, self.registry.plugin_settings(self.plugin),
                                self.backend)
            if spec.manifest.permissions.host_api and self.host_api is not None:
                sock, token = self.host_api.start_instance(spec.manifest, instance,
                                                           launch.plugin_uid(self.settings, rec.uid_index))
                issued = True
                user_key = (identity.plugin_key(self.identity_secret, self.plugin)
                            if "users:read" in spec.manifest.permissions.host_api and self.identity_secret else None)
                spec = launch.with_host_api(spec, sock, token, user_key)
            netns_fd = self._egress_namespace(spec)
            listener = launch.prepare(self.settings, spec, launch.plugin_uid(self.settings, rec.uid_index), netns_fd)
            self._disk_applied = disk_usage(self.layout, self.plugin) is not None
            inst = Instance(spec, self.sink, spec.manifest.health_path, self.children, listener, netns_fd,
                            notify=self._wake)
            # The web tier (its own uid) may pass through the plugin's socket dir and connect to the socket;
            # no one else but root may (plugins never see run/).
            share_path(self.layout.run_dir(self.plugin), self.web_user, 0o710)
            share_path(spec.instance_socket, self.web_user, 0o660)
            if issued and self.host_api is not None:
                inst.on_cleanup = _revoker(self.host_api, self.plugin, instance)
            inst.spawn()
            issued = False  # the instance revokes it when it is cleaned up
        except IntegrityError as exc:  # a changed install: it must not run, and a retry would find the same
            log.error("%s: %s", self.plugin, exc.detail)
            self.registry.record(self.plugin, "integrity_failed", path=exc.path, reason=exc.detail)
            return ExitInfo(None, True, exc.detail, setup_failure=True, cause=Cause.SETUP)
        except MissingSettings as exc:  # the operator's to fix (`host config`): a set-up failure, not a crash
            return ExitInfo(None, True, exc.detail, setup_failure=True, cause=Cause.SETUP)
        except EgressUnavailable as exc:
            return ExitInfo(None, True, f"egress: {exc}", setup_failure=True, cause=Cause.SETUP)
        except QuotaError as exc:  # fail closed: no disk quota, no start (HOST_SANDBOX=strict)
            return ExitInfo(None, True, refusal(exc), setup_failure=True, cause=Cause.SETUP)
        except Exception as exc:  # a broken install or host: not worth retrying
            log.exception("%s: cannot spawn", self.plugin)
            return ExitInfo(None, True, f"cannot start: {exc}", setup_failure=True, cause=Cause.SETUP)
        finally:
            if issued and self.host_api is not None:  # it never ran: its token goes at once
                self.host_api.stop_instance(self.plugin, instance)
        return inst

    def _check_integrity(self, rec: PluginRecord) -> None:
        """The install's files are as they were installed (host.integrity); installs made before the host
        recorded hashes have no record and start unchecked."""
        if self.settings.integrity == "off":
            return
        prov = self.registry.provenance(self.plugin, rec.install_id)
        if prov is None:
            return
        t0 = time.monotonic()
        hashed = integrity.check(self.plugin, self.layout.install_dir(self.plugin, rec.install_id), prov.integrity,
                                 full=self.settings.integrity == "full")
        log.debug("%s: integrity checked in %.1f ms (%d files hashed)", self.plugin,
                  (time.monotonic() - t0) * 1000, hashed)

    def _egress_namespace(self, spec: LaunchSpec) -> int | None:
        """The plugin's own network namespace with its egress listeners, when it has a network grant.
        Fails closed: without one, a granted plugin would share the host's network (loopback included)."""
        net = spec.manifest.permissions.network
        if not net.enabled:
            return None
        if self.egress is None:
            if self.settings.sandbox == "strict":
                raise EgressUnavailable("this host cannot give the plugin its own network namespace (egress "
                                        "needs a root host); deny the network grant or run with HOST_SANDBOX=weak")
            log.warning("%s: no egress point: the plugin shares the host's network (HOST_SANDBOX=weak)", self.plugin)
            return None
        try:
            return self.egress.attach(self.plugin, Grant.from_network(net))
        except OSError as exc:
            raise EgressUnavailable(f"cannot create the plugin's network namespace: {exc}") from exc

    def _bring_up(self) -> Instance | ExitInfo | None:
        """Spawn a new instance and wait until it answers. None means cancelled."""
        inst = self._spawn()
        if isinstance(inst, ExitInfo):
            return inst
        result = inst.wait_ready(self.settings.start_timeout, self._cancelled, self._wake_r)
        if result == Readiness.READY:
            return inst
        if result == Readiness.CANCELLED:
            why = self._stop_pending() or "cancelled"
            inst.stop(self.settings.stop_grace)
            inst.cleanup()
            self.registry.record(self.plugin, "stopped", cause=str(Cause.STOPPED), returncode=inst.returncode,
                                 reason=f"stopped by the host while starting: {why}", ran_for=inst.ran_for)
            return None
        if result == Readiness.TIMEOUT:
            inst.kill()  # it never served anything: no grace to give (a hung import ignores SIGTERM anyway)
            inst.cleanup()
            return host_killed(Cause.READINESS, not_ready(self.settings.start_timeout, inst.health_path,
                                                          inst.last_probe_error), inst.returncode,
                               inst.last_lines(TAIL, drain=DRAIN_OUTPUT), inst.ran_for, during_start=True)
        return self._exited(inst, during_start=True)

    def _exited(self, inst: Instance, during_start: bool) -> ExitInfo:
        """The instance ended by itself: why, from its exit status, the runner's report and its output."""
        tail = inst.last_lines(TAIL, drain=DRAIN_OUTPUT)
        rc = inst.poll()
        report = inst.exit_report()
        inst.cleanup()
        return classify(rc if rc is not None else -1, report, Limits.of(inst.spec.manifest.permissions.resources),
                        during_start=during_start, setup_codes=SETUP_EXIT_CODES, stderr_tail=tail,
                        ran_for=inst.ran_for)

    def _start(self) -> None:
        # precondition: lc.state == STARTING
        outcome = self._bring_up()
        if outcome is None:
            self.lc.transition(Stop())
            self.lc.transition(Stopped())
            return
        if isinstance(outcome, ExitInfo):
            self._failed(outcome)
            return
        self._go_live(outcome)
        self.lc.transition(Ready())
        self._announce()
        self.start_seconds = time.monotonic() - outcome.started_at
        log.info("%s: ready (pid %s, %.2fs)", self.plugin, outcome.pid, time.monotonic() - outcome.started_at)
        self.registry.record(self.plugin, "ready", pid=outcome.pid)
        if self._was_ready:  # back after a crash, a failed start or a stop (a first start is no restart)
            emit_quietly(self.registry, host_event("plugin.restarted", plugin=self.plugin))
        self._was_ready = True
        self._warn_if_weak()
        self._release_waiters()

    def _warn_if_weak(self) -> None:
        """HOST_SANDBOX=weak may start a plugin without some layers: say so loudly, every time."""
        missing = (self.sandbox or {}).get("missing")
        if missing:
            log.warning("%s: running with a weaker sandbox (HOST_SANDBOX=%s): missing %s", self.plugin,
                        self.settings.sandbox, ", ".join(missing))
            self.registry.record(self.plugin, "sandbox_weak", missing=missing,
                                 backend=(self.sandbox or {}).get("backend"))

    def _go_live(self, inst: Instance) -> None:
        """Point the stable socket path at this instance (atomic symlink swap)."""
        self._point_public_socket(inst)
        self.instance = inst
        # the runner wrote its report at exec; the disk layer is the host's
        self.sandbox = with_disk_layer(sandbox_summary(self.layout.sandbox_report(self.plugin)),
                                       self._disk_applied)
        self._live_since_wall = time.time()
        self._idle_timeout_cached = self.idle_timeout()
        self._probe_failures = 0
        self._next_probe = time.monotonic() + self.settings.probe_interval

    def _announce(self) -> None:
        """Once the new instance serves (state RUNNING): tell the supervisor (:attr:`on_live`)."""
        if self.on_live is not None:
            try:
                self.on_live()
            except Exception:  # the next supervisor tick publishes anyway
                log.exception("%s: cannot announce the new instance", self.plugin)

    def _point_public_socket(self, inst: Instance) -> None:
        public = inst.spec.socket
        tmp = public.with_name(f".{public.name}.{self.generation}")
        tmp.unlink(missing_ok=True)
        os.symlink(inst.spec.instance_socket.name, tmp)
        os.replace(tmp, public)

    def _replace(self, upgrade: bool = False) -> bool:
        """Zero-downtime restart: bring up a new instance, switch, then drain the old one. False when the
        new instance did not come up (the old one keeps serving). ``upgrade``: the old instance is kept up for
        HOST_UPGRADE_PROBATION seconds instead, to serve again at once should the new version fail."""
        self._end_probation()
        old = self.instance
        outcome = self._bring_up()
        if outcome is None or isinstance(outcome, ExitInfo):
            why = outcome.reason if outcome else "cancelled"
            log.error("%s: restart failed, the old instance keeps serving: %s", self.plugin, why)
            self.registry.record(self.plugin, "restart_failed", reason=why)
            self.lc.transition(ReplaceFailed(why))
            return False
        self._go_live(outcome)
        self.lc.transition(Replaced())
        self._announce()
        self.start_seconds = time.monotonic() - outcome.started_at
        self.registry.record(self.plugin, "restarted", pid=outcome.pid)
        emit_quietly(self.registry, host_event("plugin.restarted", plugin=self.plugin))
        window = self.settings.upgrade_probation
        # With another network grant the egress point now holds the new one: the old instance could not serve
        # as it did, so it drains at once and this upgrade has no automatic rollback (`host rollback` remains).
        if upgrade and old is not None and window > 0 \
                and old.spec.manifest.permissions.network == outcome.spec.manifest.permissions.network:
            self._standby, self._probation_until = old, time.monotonic() + window
            log.info("%s: upgraded; the previous instance stands by for %gs", self.plugin, window)
            return True
        if old is not None:
            self._drains = [t for t in self._drains if t.is_alive()]
            t = threading.Thread(target=self._drain_old, args=(old,), name=f"drain-{self.plugin}", daemon=True)
            t.start()
            self._drains.append(t)
        return True

    def _end_probation(self) -> None:
        """The upgraded instance stayed healthy (or an operator acted): the previous one drains and stops."""
        old, self._standby = self._standby, None
        if old is None:
            return
        self._drains = [t for t in self._drains if t.is_alive()]
        t = threading.Thread(target=self._drain_old, args=(old,), name=f"drain-{self.plugin}", daemon=True)
        t.start()
        self._drains.append(t)

    def _roll_back(self, info: ExitInfo) -> None:
        """The upgraded instance failed within its probation: the previous instance serves again at once and
        the registry goes back to its install (the new one stays on disk; `host install` may retry it)."""
        standby, self._standby = self._standby, None
        assert standby is not None
        failed = self.instance
        self._note(info)
        self.registry.record(self.plugin, "crashed", **_details(info))
        if failed is not None:
            self._failed_upgrade = failed.spec.install_id
        self._go_live(standby)
        m = standby.spec.manifest
        self.registry.roll_back(self.plugin, m.version, standby.spec.install_id, m.model_dump(mode="json"),
                                reason=f"the upgrade failed within {self.settings.upgrade_probation:g}s: {info.reason}",
                                failed=True)
        self.lc.transition(RolledBack(info.reason))
        log.error("%s: the upgraded version failed within its probation (%s); %s %s serves again", self.plugin,
                  info.reason, m.name, m.version)

    def _drain_old(self, old: Instance) -> None:
        # This thread owns `old` from now on: SIGTERM lets it finish in-flight requests, then SIGKILL.
        old.stop(self.settings.stop_grace)
        old.cleanup()

    def _failed(self, info: ExitInfo) -> None:
        if self._standby is not None:
            self._roll_back(info)
            return
        self.instance = None
        state = self.lc.transition(Failed(info))
        self._note(info)
        if state == State.QUARANTINED:
            self._quarantined(info)
        else:
            log.warning("%s: %s; restarting in %.2fs", self.plugin, info.reason,
                        self.lc.backoff_until - self.lc.clock())
            self.registry.record(self.plugin, "crashed", **_details(info))

    def _quarantined(self, info: ExitInfo) -> None:
        self.quarantines += 1
        log.error("%s: QUARANTINED — %s%s", self.plugin, self.lc.reason,
                  "".join(f"\n    {ln}" for ln in info.stderr_tail))
        self.registry.record(self.plugin, "quarantined", **{**_details(info), "reason": self.lc.reason,
                                                             "last": info.reason, "stderr": list(info.stderr_tail)})
        # Not its stderr: subscribers are other plugins.
        emit_quietly(self.registry, host_event("plugin.quarantined", plugin=self.plugin, reason=info.reason[:200]))
        self._release_waiters()

    def _note(self, info: ExitInfo) -> None:
        """Say why in the plugin's own log too (`host logs`), right after its last words."""
        ran = f" after {info.ran_for:.1f}s" if info.ran_for is not None else ""
        self.sink.note(f"{'worker died' if info.worker else 'instance ended'}{ran}: {info.reason}")

    # -- running ----------------------------------------------------------------------------------------

    def idle_timeout(self) -> float:
        override = self.registry.get_setting(f"idle_timeout:{self.plugin}")
        return float(override) if override is not None else self.settings.idle_timeout

    def _idle_for(self, inst: Instance) -> float:
        """Seconds since the web tier last proxied to this plugin (or since it started)."""
        return time.time() - max(self.last_active, self._live_since_wall)

    def _watch(self) -> None:
        inst = self.instance
        assert inst is not None
        if self._standby is not None and time.monotonic() >= self._probation_until:
            log.info("%s: the upgraded version stayed healthy for %gs; the previous instance stops", self.plugin,
                     self.settings.upgrade_probation)
            self._end_probation()
        idle_timeout = self._idle_timeout_cached
        if idle_timeout > 0:
            idle = self._idle_for(inst)
            if idle >= idle_timeout:
                log.info("%s: idle for %.0fs; stopping until the next request", self.plugin, idle)
                self.registry.record(self.plugin, "scaled_to_zero", idle=round(idle, 1))
                self.asleep = True
                self._stop_instance(f"idle for {idle:.0f}s (scale to zero)")
                return
            self._next_probe = min(self._next_probe, time.monotonic() + idle_timeout - idle + 0.05)
        timeout = max(0.0, self._next_probe - time.monotonic())
        if self._standby is not None:
            timeout = min(timeout, max(0.0, self._probation_until - time.monotonic()))
        tick = self.lc.wake_at()
        if tick is not None:
            timeout = min(timeout, max(0.0, tick - self.lc.clock()))
        if inst.wait_exit(timeout, extra_fd=self._wake_r):
            if self._standby is not None:  # on probation: the previous instance takes the traffic back first
                self._point_public_socket(self._standby)
            self._failed(self._exited(inst, during_start=False))
            return
        self._consume_wake()
        if self._workers_died(inst):
            return
        if self.lc.state == State.DEGRADED and self.lc.transition(Tick()) == State.RUNNING:
            log.info("%s: no worker died for %gs; running normally again", self.plugin, self.settings.failure_window)
            self.registry.record(self.plugin, "recovered")
        if time.monotonic() >= self._next_probe:
            self._liveness(inst)
            self._idle_timeout_cached = self.idle_timeout()

    def _workers_died(self, inst: Instance) -> bool:
        """Count the workers the live instance's gunicorn reported dead; True when that quarantined it (the
        instance is gone then)."""
        limits = Limits.of(inst.spec.manifest.permissions.resources)
        while inst.worker_exits:
            status = inst.worker_exits.popleft()
            news = inst.cgroup_news()
            info = worker_death(status, limits, oom_kills=news["oom_kills"], forks_refused=news["forks_refused"],
                                stderr_tail=inst.last_lines(TAIL))
            state = self.lc.transition(WorkerDied(info))
            self._note(info)
            if state == State.QUARANTINED:
                # Its workers keep dying: stop the whole instance, loudly (no grace: it is failing as it is).
                if self._standby is not None:  # an upgrade on probation: the previous version takes over
                    self._point_public_socket(self._standby)
                    inst.kill()
                    inst.cleanup()
                    self._roll_back(info)
                    return True
                inst.kill()
                inst.cleanup()
                self.instance = None
                self.layout.socket(self.plugin).unlink(missing_ok=True)
                self._quarantined(info)
                return True
            log.warning("%s: degraded: %s", self.plugin, self.lc.reason)
            self.registry.record(self.plugin, "worker_died", **_details(info))
        return False

    def _liveness(self, inst: Instance) -> None:
        self._next_probe = time.monotonic() + self.settings.probe_interval
        self._check_disk()
        public = inst.spec.socket
        if not public.is_symlink() or os.readlink(public) != inst.spec.instance_socket.name:
            # Someone removed or replaced the path the proxy connects to: the plugin is fine, its address
            # is not. Put it back rather than restart a healthy plugin.
            log.warning("%s: %s was missing or wrong; restored it", self.plugin, public)
            self._point_public_socket(inst)
        why = probe(inst.spec.instance_socket, inst.health_path, self.settings.probe_timeout, self._wake_r)
        if why == INTERRUPTED:
            self._next_probe = time.monotonic()  # a command first; probe again on the next turn
            return
        if why is None:
            self._probe_failures = 0
            return
        if why == "socket missing" and inst.wait_exit(SOCKET_GONE_GRACE):
            # gunicorn unlinks its socket first when it shuts down: report the exit, not its symptom.
            return
        self._probe_failures += 1
        log.warning("%s: liveness probe failed (%d/%d): %s", self.plugin, self._probe_failures,
                    self.settings.probe_failures, why)
        if self._probe_failures >= self.settings.probe_failures or why == "socket missing":
            inst.kill()
            tail = inst.last_lines(TAIL, drain=DRAIN_OUTPUT)
            inst.cleanup()
            self._failed(host_killed(Cause.UNHEALTHY, unhealthy(inst.health_path, why), inst.returncode, tail,
                                     inst.ran_for))

    def _check_disk(self) -> None:
        """Say once, loudly, when the plugin's data dir fills up (its writes now fail with ENOSPC)."""
        use = disk_usage(self.layout, self.plugin)
        said = self._disk.update(use)
        if said is None:
            return
        if self._disk.full:
            log.warning("%s: %s", self.plugin, said)
            self.registry.record(self.plugin, "disk_full", **(use.as_dict() if use else {}))
        else:
            log.info("%s: %s", self.plugin, said)

    # -- stopping ---------------------------------------------------------------------------------------

    def _stop_instance(self, why: str = "stopped") -> None:
        standby, self._standby = self._standby, None
        if standby is not None:  # not serving: no history entry of its own
            standby.stop(self.settings.stop_grace)
            standby.cleanup()
        inst = self.instance
        if self.lc.state == State.STOPPED:
            return
        self.lc.transition(Stop())
        if inst is not None:
            inst.stop(self.settings.stop_grace)
            inst.cleanup()
            self.registry.record(self.plugin, "stopped", cause=str(Cause.STOPPED), reason=f"stopped by the host: {why}",
                                 returncode=inst.returncode, ran_for=inst.ran_for)
        self.instance = None
        self.layout.socket(self.plugin).unlink(missing_ok=True)
        self.lc.transition(Stopped())
        self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.set()


def _revoker(api: HostApi, plugin: str, instance: str) -> Callable[[], None]:
    return lambda: api.stop_instance(plugin, instance)


def _details(info: ExitInfo) -> dict[str, Any]:
    """An exit as an event's detail (`host status` shows them as the plugin's history)."""
    return {"cause": str(info.cause), "reason": info.reason, "returncode": info.returncode, "ran_for": info.ran_for,
            "during_start": info.during_start}
