"""Install and uninstall plugins: validate, copy, build a private venv, check the entrypoint, then commit.

Nothing is visible until the final registry commit. Every install builds into a fresh
``plugins/<name>/<install_id>/`` marked with a ``.partial`` file; a failure, Ctrl-C or kill -9 before the
commit leaves only that marked directory, which is removed at once or by the next sweep (under the home lock).
The installer holds a flock on that marker while it builds: sweeps leave a live build alone, and the home's
lock is held only to set up and to commit, so builds of different plugins overlap (locked_for). The marker
names what the install created outside that directory (a first install's data dir, with its disk image and
mount, and its run dir), so a sweep removes those too when the plugin is still not registered.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from host import (
    control,
    integrity,
    launch,
    lockfile,
    plugin_settings,
    rootfs,
    setting_paths,
    signing,
    snapshots,
    trust,
    venv_template,
    wheel_cache,
)
from host.bundle import BundleError, copy_bundle
from host.egress.indexes import index_urls
from host.egress.point import EgressPoint
from host.egress.rules import Grant, index_destinations
from host.errors import HostError, InstallError, UnsafeTree, UsageError
from host.exits import Cause, ExitReport, Limits, classify
from host.hooks.events import emit_quietly, host_event
from host.hooks.install_filter import install_policy
from host.layout import PARTIAL_MARKER, Layout
from host.pip_options import UvCommand, index_options, redact, uv_command, without_constraints
from host.quota import Quota, disk_usage, ensure_mounted, release, remove
from host.registry import InstallRecord, Provenance, Registry
from host.runtime import RUNTIME_DIR, runtime_files
from host.settings import HostSettings
from host.uids import UidFile
from host.venv_template import Templates
from host.wheel_cache import WheelCache, shared_index
from manifests import Manifest, load_manifest, parse_manifest
from manifests.entrypoint import check_entrypoint
from manifests.settings import Value
from sandbox_runner.errors import SETUP_EXIT_CODES
from sandbox_runner.layers import cgroup
from sandbox_runner.policy import Policy

log = logging.getLogger(__name__)

KEPT_VENV = ".venv-template"  # in the partial install: its venv, kept for reuse once the install commits
# The plugin runtime every venv gets next to the plugin's own requirements. pip resolves them together,
# so a plugin pinning its own Flask keeps it.
RUNTIME_REQUIREMENTS = ("flask>=2.2", "gunicorn>=23")
PIP_TIMEOUT = 900.0
CHECK_TIMEOUT = 60.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Built:
    skipped: list[str]  # symlinks left out of the bundle's copy
    verified: signing.Verified | None  # its signature
    reuse: tuple[Templates, str] | None = None  # where its venv, kept in the install, goes (host.venv_template)
    digest: str | None = None  # the integrity record's, when it was written during the entrypoint check


@dataclass(frozen=True)
class InstallResult:
    manifest: Manifest
    install_id: str
    changed: bool  # False when the same version was already installed (no-op)
    skipped_symlinks: tuple[str, ...] = ()
    missing_settings: tuple[str, ...] = ()  # required settings without a value: it cannot start yet
    signer: str | None = None  # the key id that signed the bundle (None: unsigned, or HOST_SIGNATURES=off)


@contextmanager
def home_lock(layout: Layout) -> Iterator[None]:
    """Serialise installs/uninstalls/sweeps across processes."""
    layout.ensure()
    with open(layout.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def locked_for(layout: Layout, name: str) -> Iterator[None]:
    """home_lock, taken at a moment when no build of ``name`` is running: one that is (its partial install's
    marker flocked by a live installer, host.installer._claim) is waited for first, without the home's lock,
    so builds of other plugins go on meanwhile."""
    while True:
        with home_lock(layout):
            live = _live_build(layout.plugin_root(name))
            if live is None:
                yield
                return
        try:
            fcntl.flock(live, fcntl.LOCK_EX)  # returns when that build has ended, one way or the other
        finally:
            os.close(live)


def _claim(target: Path, fresh: Sequence[str] = ()) -> int:
    """Create the install dir with its partial marker, flocked for as long as the returned fd is open. The
    marker lists ``fresh``: what of FRESH_KINDS this install is about to create, for a sweep after a kill."""
    target.mkdir(parents=True)
    fd = os.open(target / PARTIAL_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if fresh:
        os.write(fd, "".join(f"{kind}\n" for kind in fresh).encode())
    return fd


FRESH_KINDS = ("data", "run")  # a first install's data dir (its disk image and mount with it) and run dir


def _fresh(install: Path) -> set[str]:
    """What the (dead) partial install ``install`` created outside its own directory, from its marker."""
    try:
        text = (install / PARTIAL_MARKER).read_text(errors="replace")
    except OSError:
        return set()
    return set(text.split()) & set(FRESH_KINDS)


def _building(install: Path) -> bool:
    """A partial install whose build is still running (its marker is flocked by a live installer)."""
    fd = _marker_held(install)
    if fd is None:
        return False
    os.close(fd)
    return True


def _marker_held(install: Path) -> int | None:
    """An fd of the partial marker of ``install`` when a live installer holds its flock, else None."""
    try:
        fd = os.open(install / PARTIAL_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd
    os.close(fd)  # closing it drops the lock we just took
    return None


def _live_build(root: Path) -> int | None:
    """An fd of the marker of a build of this plugin still running, if there is one."""
    try:
        installs = list(root.iterdir())
    except OSError:
        return None
    for d in installs:
        fd = _marker_held(d)
        if fd is not None:
            return fd
    return None


def sweep(layout: Layout, registry: Registry) -> list[Path]:
    """Remove half-finished installs (call under home_lock), except those still being built. Returns what was
    removed."""
    removed: list[Path] = []
    if not layout.plugins.is_dir():
        return removed
    for root in layout.plugins.iterdir():
        if not root.is_dir():
            continue
        rec = registry.get(root.name)
        dead: list[Path] = []
        live = False
        for d in root.iterdir():
            if not (d / PARTIAL_MARKER).exists():
                continue
            if _building(d):
                live = True
                continue
            if rec is not None and rec.install_id == d.name:
                (d / PARTIAL_MARKER).unlink()  # killed between the commit and the marker removal
                continue
            dead.append(d)
        for d in dead:
            # A registered plugin's data is never touched, nor that of a build of it still running.
            if rec is None and not live:
                _drop_outside(layout, root.name, _fresh(d))
            rootfs.remove_tree(d)  # last: its marker says what else to remove, should this sweep be killed too
            removed.append(d)
        if rec is None and not any(root.iterdir()):
            root.rmdir()
    return removed


def _drop_outside(layout: Layout, name: str, fresh: set[str]) -> None:
    """What a killed install of the unregistered plugin ``name`` left outside its install dir, as its failure
    would have removed it (Installer.install): the confined steps' files in run/; a data dir it created, with
    its disk image and that image's mount; its run dir. A data dir from before (`uninstall --keep-data`) is
    only unmounted, as the uninstall left it."""
    for leftover in layout.run.glob(f".{name}.*"):  # reports, policies, passwd files
        leftover.unlink(missing_ok=True)
    if "data" not in fresh:
        release(layout, name, lazy=True)
    else:
        remove(layout, name)  # unmount first: removing the data dir must remove the mount point, not the image's files
        if disk_usage(layout, name) is None:
            rootfs.remove_tree(layout.data(name))
        else:
            log.warning("%s: the image a killed install mounted on %s is still mounted; its data dir is kept",
                        name, layout.data(name))
    if "run" in fresh:
        rootfs.remove_tree(layout.run_dir(name))
    log.info("%s: removed what its killed first install left (%s)", name, ", ".join(sorted(fresh)) or "run files")


class Installer:
    def __init__(self, settings: HostSettings, registry: Registry, progress: Progress, who: str | None = None) -> None:
        """``who``: the actor named in the audit events of installs and uninstalls (Registry.record)."""
        self.settings = settings
        self.who = who
        self.layout = Layout(settings.home_dir)
        self.registry = registry
        self.progress = progress

    def install(self, source: Path, *, enable: bool = True, force: bool = False,
                confirm: Callable[[Manifest], bool] | None = None, settings: Sequence[str] = (),
                overrides: trust.Overrides = trust.Overrides()) -> InstallResult:  # noqa: B008 - frozen
        """``settings``: ``key=value`` words for the manifest's [settings] (`host install --set`); ``overrides``:
        what the operator explicitly allowed (a downgrade, a new publisher key), audited."""
        self.progress(f"resolving {source}")
        if not source.is_dir():
            raise UsageError(f"{source}: not a plugin directory")
        # A bad manifest or an entrypoint the plugin does not have is bad input (exit 2), found before anything
        # is built: ManifestError goes up as it is.
        manifest = load_manifest(source)
        check_entrypoint(source, manifest)
        name = manifest.name
        self.layout.check_socket_length(name)
        given = plugin_settings.parse_assignments(manifest, settings)  # bad input fails before anything happens
        with home_lock(self.layout):
            sweep(self.layout, self.registry)  # whatever an earlier kill -9 left behind
        existing = self.registry.get(name)
        if existing and existing.version == manifest.version and not force:
            self.progress(f"{name} {manifest.version} is already installed (use --force to reinstall"
                          + (f"; `host config {name} KEY=VALUE` to change settings)" if given else ")"))
            return InstallResult(manifest, existing.install_id, changed=False)
        decision = trust.check_version(self.registry, name, manifest.version, overrides)
        if self.settings.signatures != "off" and not (source / signing.SIGNATURE_FILE).is_file():
            self.progress("the bundle is unsigned" + (" (HOST_SIGNATURES=require refuses it)"
                                                      if self.settings.signatures == "require" else ""))
        if confirm is not None and not confirm(manifest):
            raise InstallError(name, "asking for consent", "declined; nothing was installed")
        veto = install_policy(self.layout, manifest)  # the plugin.install filters (a policy plugin may refuse)
        if veto is not None:
            raise InstallError(name, "checking the install policy", veto)

        # The home's lock only to set up and to commit, so builds of different plugins overlap; another
        # install, an uninstall or a rollback of this plugin waits for this build (locked_for).
        with locked_for(self.layout, name):
            existing = self.registry.get(name)
            sweep(self.layout, self.registry)
            install_id = f"{manifest.version}-{secrets.token_hex(3)}"
            target = self.layout.install_dir(name, install_id)
            log_path = self.layout.logs(name) / f"install-{install_id}.log"
            # what this install creates outside its install dir (FRESH_KINDS), removed should it fail
            fresh = {kind: d for kind, d in zip(FRESH_KINDS, (self.layout.data(name), self.layout.run_dir(name)),
                                                strict=True) if not d.exists()}
            uid_index = self._uid_index(name)
            # An upgrade (or a reinstall after --keep-data) keeps the values its manifest still declares.
            kept, dropped = plugin_settings.kept_on_upgrade(manifest, self.registry.plugin_settings(name))
            # a live partial install: sweeps leave it alone; once dead, they remove it with what `fresh` names
            building = _claim(target, list(fresh))
        if dropped:
            self.progress(f"dropping setting{'s' if len(dropped) > 1 else ''} {', '.join(dropped)}: not "
                          f"declared by {name} {manifest.version}, or no longer valid for its type")
        values = {**kept, **given}
        for hint in setting_paths.hidden_paths(manifest, plugin_settings.effective(manifest, values), self.layout):
            self.progress(f"warning: {hint}")
        committed = False
        try:
            built = self._build(source, manifest, target, log_path, uid_index, values, (overrides, decision))
            digest = built.digest
            if digest is None:  # no entrypoint check to record them during
                self.progress("recording file hashes")
                digest = integrity.record(target)
            with home_lock(self.layout):
                if existing is not None:
                    self._snapshot(manifest, existing.install_id, existing.version, uid_index)
                self.progress("registering")
                self.registry.put(name, manifest.version, install_id, manifest.model_dump(mode="json"),
                                  enabled=enable if existing is None else (existing.enabled and enable),
                                  uid_index=uid_index, plugin_settings=values, who=self.who,
                                  provenance=Provenance(digest, built.verified.key if built.verified else None),
                                  pin=decision.pin)
                (target / PARTIAL_MARKER).unlink()
                emit_quietly(self.registry, host_event("plugin.upgraded" if existing else "plugin.installed",
                                                       plugin=name, version=manifest.version,
                                                       **({"from": existing.version} if existing else {})))
                committed = True  # what follows failing does not undo the install
                for kind, detail in decision.audit:
                    self.registry.record(name, kind, who=self.who, **detail)
                self._quota_after_install(name, failed_first=False)
                self._drop_old_installs(name, install_id, existing.install_id if existing else None)
        except BaseException:
            if committed:
                raise
            with home_lock(self.layout):
                self._quota_after_install(name, failed_first="data" in fresh)
                rootfs.remove_tree(target)
                for d in fresh.values():
                    rootfs.remove_tree(d)
                if existing is None:  # what its confined steps left in run/ (reports, passwd files)
                    for leftover in self.layout.run.glob(f".{name}.*"):
                        leftover.unlink(missing_ok=True)
                sweep(self.layout, self.registry)
            raise
        finally:
            os.close(building)
        self._fill_shared_cache(target / "venv")  # outside the lock: other installs may run meanwhile
        self._publish_template(target, built.reuse)
        return InstallResult(manifest, install_id, changed=True, skipped_symlinks=tuple(built.skipped),
                             missing_settings=tuple(plugin_settings.missing(manifest, values)),
                             signer=built.verified.key_id if built.verified else None)

    def _uid_index(self, name: str) -> int:
        """The plugin's uid index in this home. A root host takes the uid from the machine-wide uid file, so
        no two homes on this machine run plugins as the same uid; a plugin keeps the uid it already has."""
        own = self.registry.own_uid_index(name)
        base = self.settings.uid_base
        if launch.plugin_uid(self.settings, 0) is None:  # not root: plugins run in a user namespace instead
            return self.registry.uid_index_for(name)
        return UidFile(self.settings.uid_file).claim(self.layout.home, name, base,
                                                     None if own is None else base + own) - base

    def _build(self, source: Path, manifest: Manifest, target: Path, log_path: Path, uid_index: int,
               values: dict[str, Value], trusted: tuple[trust.Overrides, trust.Decision],
               ) -> _Built:
        name = manifest.name
        uid = launch.plugin_uid(self.settings, uid_index)
        log_path.parent.mkdir(parents=True, exist_ok=True)

        self.progress("copying bundle")
        try:
            report = copy_bundle(source, target / "bundle")
        except (BundleError, OSError) as exc:
            raise InstallError(name, "copying the bundle", str(exc)) from exc
        for s in report.skipped_symlinks:
            self.progress(f"warning: skipped symlink {s} (points outside the plugin directory)")
        self.progress(f"copied {report.files} files ({report.bytes // 1024} KiB)")
        # Checked on the copy (what will run), and before pip runs any of the bundle's build code.
        verified = signing.verify(target / "bundle", name, manifest.version) if self.settings.signatures != "off" \
            else None
        trust.check_publisher(self.settings, self.registry, name, verified, *trusted)
        for note in trusted[1].notes:
            self.progress(note)

        try:
            uv = uv_command(self.settings.installer, self.settings.pip_args, self.settings.wheelhouse)
        except ValueError as exc:
            raise InstallError(name, "choosing the installer", str(exc)) from exc
        lock = target / "bundle" / lockfile.LOCK_FILE
        reuse = self._templates(manifest, lock.is_file(), uv)
        template = reuse[0].find(reuse[1]) if reuse is not None else None
        venv = target / "venv"
        if template is not None and reuse is not None:
            self.progress("creating venv: a copy of the one an earlier install built of the same packages")
            try:
                reuse[0].clone(template, venv)
            except OSError as exc:
                self.progress(f"warning: the kept venv could not be copied ({exc}); building one")
                rootfs.remove_tree(venv)
                template = None
        if template is not None:
            reqs = list(RUNTIME_REQUIREMENTS)
            self.progress(f"{len(template.dists)} packages for {', '.join(reqs)} came with it: nothing to install")
            (target / "requirements.txt").write_text("\n".join(reqs) + "\n")
            launch.record_runtime_facts(target)
            return self._check(manifest, target, uid, log_path, values, _Built(report.skipped_symlinks, verified))
        self._create_venv(name, venv, uv, log_path)
        self._install_packages(manifest, target, uid, log_path, uv, lock)
        launch.record_runtime_facts(target)
        kept = reuse is not None and self._keep_venv(venv, target)
        return self._check(manifest, target, uid, log_path, values,
                           _Built(report.skipped_symlinks, verified, reuse if kept else None))

    def _create_venv(self, name: str, venv: Path, uv: UvCommand | None, log_path: Path) -> None:
        self.progress("creating venv")
        if uv is not None:
            # uv: ~0.1 s of CPU where virtualenv takes ~1.5 s; no pip seeded (uv installs the packages)
            self._run(name, "creating the venv", [uv.binary, "venv", "--no-config", "--quiet", "--python",
                      _base_python(), str(venv)], log_path, 300.0, env={"UV_PYTHON_DOWNLOADS": "never"})
        else:
            self._run(name, "creating the venv", [sys.executable, "-m", "virtualenv", "--no-download",
                      "--no-periodic-update", "--quiet", "-p", _base_python(), str(venv)], log_path, 300.0)

        # Root writes into the venv only now, while no plugin-supplied code has touched it: once pip has run
        # (sdist builds are plugin code), paths inside the venv may be symlinks planted to redirect us.
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        if not site.is_dir() or site.is_symlink():
            raise InstallError(name, "creating the venv", f"no site-packages at {site}")
        for mod in runtime_files():
            (site / mod).parent.mkdir(exist_ok=True)
            shutil.copyfile(RUNTIME_DIR / mod, site / mod)

    def _install_packages(self, manifest: Manifest, target: Path, uid: int | None, log_path: Path,
                          uv: UvCommand | None, lock: Path) -> None:
        name = manifest.name
        if lock.is_file():  # the copy: signed (when the bundle is), and root's
            text = lock.read_text(errors="replace")
            pinned = lockfile.check(name, text, manifest.requirements)
            self.progress(f"installing {len(pinned)} locked packages from {lockfile.LOCK_FILE} (--require-hashes)")
            (target / "requirements.txt").write_text(text)
        else:
            reqs = [*manifest.requirements, *RUNTIME_REQUIREMENTS]
            self.progress(f"installing {len(reqs)} packages: {', '.join(reqs)}")
            (target / "requirements.txt").write_text("\n".join(reqs) + "\n")
        self._pip(name, target, uid, log_path, uv, locked=lock.is_file())

    def _check(self, manifest: Manifest, target: Path, uid: int | None, log_path: Path, values: dict[str, Value],
               built: _Built) -> _Built:
        """The confined entrypoint check, recording the install's file hashes meanwhile (``built.digest``)."""
        name, venv = manifest.name, target / "venv"
        # The entrypoint is imported once, confined exactly as it will run, so a plugin that cannot even
        # import never gets registered (and its import-time code never runs with the host's privileges).
        absent = plugin_settings.missing(manifest, values)
        if absent:  # its import may well need them: it is checked when it first starts instead
            self.progress(f"not checking entrypoint {manifest.entrypoint} yet: it needs {', '.join(absent)}")
            return built
        self.progress(f"checking entrypoint {manifest.entrypoint}, recording file hashes meanwhile")
        # It writes into the data dir as the plugin will: inside its disk quota image.
        ensure_mounted(self.settings, name, Quota.of(manifest.permissions.resources), uid)
        rootfs.prepare_plugin_dirs(self.layout, name, target, uid)
        policy_path = target / ".check.policy.json"
        policy = launch.with_user(self.settings, launch.runtime_policy(self.settings, manifest, target, uid), uid)
        # with its settings, as it will start (settings.json too: import-time code may read either)
        start_values = plugin_settings.effective(manifest, values)
        policy = dataclasses.replace(policy, env={**policy.env, **plugin_settings.environment(
            manifest, start_values, self.layout.data(name))})
        if manifest.settings:
            plugin_settings.write_settings_file(self.layout, name, start_values, uid)
        launch.write_policy(policy, policy_path)
        check = launch.confined(policy_path, [str(venv / "bin" / "python"), "-I", "-c", "import plugin_host_wsgi"])
        # The bundle and the venv are final and root's (the check only reads them), and the check is mostly a
        # wait on the confined process: hash them meanwhile, on another core when there is one.
        with ThreadPoolExecutor(1) as pool:  # leaving waits for the hashing: a failure then removes the dir
            hashing = pool.submit(integrity.record, target)
            self._run(name, "checking the entrypoint", check, log_path, CHECK_TIMEOUT, policy=policy)
        policy_path.unlink()
        return dataclasses.replace(built, digest=hashing.result())

    def _templates(self, manifest: Manifest, locked: bool, uv: UvCommand | None) -> tuple[Templates, str] | None:
        """Where the venv of a plugin adding nothing to the runtime is kept and found (host.venv_template), and
        its key; None for any other plugin, or without the shared wheel cache."""
        shared = self._shared_cache()
        if shared is None or locked or manifest.requirements:
            return None
        shared.prune()  # as an install would: a release no longer fresh there is asked for again
        installer = [uv.binary, *uv.args] if uv is not None else \
            ["pip", *index_options(self.settings.pip_args, wheelhouse=self.settings.wheelhouse)]
        key = venv_template.key("\n".join(RUNTIME_REQUIREMENTS), installer, f"{_base_python()} {sys.version}",
                                RUNTIME_DIR, runtime_files(), shared)
        return Templates(self.layout.venvs, shared), key

    def _keep_venv(self, venv: Path, target: Path) -> bool:
        """Copy the venv, just installed and locked and before any code of the plugin ran, into the partial
        install, for host.venv_template once the install commits. Never fails the install."""
        try:
            Templates.keep(venv, target / KEPT_VENV)
        except (OSError, StopIteration) as exc:
            self.progress(f"warning: the venv is not kept for later installs: {exc}")
            rootfs.remove_tree(target / KEPT_VENV)
            return False
        return True

    def _publish_template(self, target: Path, reuse: tuple[Templates, str] | None) -> None:
        if reuse is None or not (target / KEPT_VENV).is_dir():
            return
        try:
            reuse[0].publish(reuse[1], target / KEPT_VENV)
        except OSError as exc:
            self.progress(f"warning: the venv is not kept for later installs: {exc}")
            rootfs.remove_tree(target / KEPT_VENV)

    def _pip(self, name: str, target: Path, uid: int | None, log_path: Path, uv: UvCommand | None = None,
             locked: bool = False) -> None:
        """pip (or uv) runs confined as the plugin's uid: sdist build scripts are plugin-supplied code.
        ``locked``: the requirements are a bundle's requirements.lock, installed with --require-hashes.

        With a shared wheel cache (host.wheel_cache) holding wheels, a first attempt takes every package from it
        and the local find-links only, with no network at all (no index queries: most of a warm install's time);
        when that cannot satisfy the requirements, the second attempt resolves against the index as before."""
        venv = target / "venv"
        tmp = target / ".tmp"  # pip's HOME and TMPDIR: fresh, and removed when pip is done
        cache = tmp / "cache"  # per install too: build code can write into pip's cache, so no later install reads it
        for d in (tmp, cache):
            rootfs.ensure_dir(d, None)
        if uid is not None:
            for d in (cache, tmp, venv):
                self._chown(name, d, uid)
        shared = self._shared_cache()
        if shared is not None:
            shared.prune()  # what is no longer fresh goes before this install could resolve to it
        shared = shared if shared is not None and shared.usable() else None
        try:
            if shared is None or not self._offline_attempt(name, target, uid, log_path, uv, locked, shared):
                self._pip_attempt(name, target, uid, log_path, uv, locked, shared, online=True)
        finally:
            rootfs.remove_tree(tmp)
        if uid is not None:
            # Only on success: a failed install is removed whole. Hard links stay the plugin's, so refuse them.
            linked = self._chown(name, venv, 0, rootfs.LOCK_STRIP)  # the plugin may read its venv, never change it
            if linked:
                raise InstallError(name, "locking the venv", f"{venv / linked[0]}: a hard link (its other name may "
                                   "be a host file, so root neither chowns nor chmods it)")

    def _offline_attempt(self, name: str, target: Path, uid: int | None, log_path: Path, uv: UvCommand | None,
                         locked: bool, shared: WheelCache) -> bool:
        """Everything from the shared cache and the local find-links; False (and why, as progress) if not."""
        try:
            self._pip_attempt(name, target, uid, log_path, uv, locked, shared, online=False)
        except InstallError as exc:
            why = str(exc).split(": ", 2)[-1].split(" (full log:")[0]
            self.progress(f"not all from the shared wheel cache ({why[:120]}); asking the index")
            return False
        return True

    def _pip_attempt(self, name: str, target: Path, uid: int | None, log_path: Path, uv: UvCommand | None,
                     locked: bool, shared: WheelCache | None, online: bool) -> None:
        """One confined run of the installer; ``online=False``: no network, the shared cache instead of the index."""
        venv = target / "venv"
        cache = target / ".tmp" / "cache"
        policy_path = target / ".pip.policy.json"
        policy = launch.pip_policy(self.settings, name, target, cache, uid, uv,
                                   shared=shared.root if shared is not None else None, online=online)
        point, netns_fd = self._pip_egress(name) if online else (None, None)
        if netns_fd is not None:
            policy = dataclasses.replace(policy, network=dataclasses.replace(policy.network, netns_fd=netns_fd))
        launch.write_policy(policy, policy_path)
        locking: Callable[[Sequence[str]], Sequence[str]] = without_constraints if locked else tuple
        hashes = ("--require-hashes",) if locked else ()
        # the shared cache is one more find-links directory; offline, with no index at all
        extra = [*(() if online else ("--no-index",)), *(("--find-links", str(shared.root)) if shared else ())]
        if uv is not None:
            # --compile-bytecode: the venv is read-only to the plugin, so without it every start recompiles
            # in memory; --link-mode copy: nothing in the venv is a hard link into the (removed) cache.
            pip = [uv.binary, "pip", "install", "--no-config", "--no-progress", "--python",
                   str(venv / "bin" / "python"), "--compile-bytecode", "--link-mode", "copy", *locking(uv.args),
                   *extra, *(() if online else ("--offline",)), *hashes, "-r", str(target / "requirements.txt")]
        else:
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                   *locking(index_options(self.settings.pip_args, wheelhouse=self.settings.wheelhouse)), *extra,
                   *hashes, "-r", str(target / "requirements.txt")]
        try:
            self._run(name, "installing packages" if online else "installing packages from the shared wheel cache",
                      launch.confined(policy_path, pip), log_path, PIP_TIMEOUT,
                      pass_fds=(netns_fd,) if netns_fd is not None else (), policy=policy)
        finally:
            if point is not None:
                point.close()
            policy_path.unlink(missing_ok=True)

    def _fill_shared_cache(self, venv: Path) -> None:
        """Put the verified wheel of each release the new venv holds into the shared cache (host.wheel_cache),
        for the installs after this one. Never fails the install: a wheel not cached is fetched next time."""
        shared, index = self._shared_cache(), shared_index(self.settings.pip_args)
        if shared is None or index is None:
            return
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        dists = wheel_cache.installed(site)
        try:
            shared.ensure()
            missing = [d for d in dists if not shared.has(*d)]
            if not missing:
                return
            self.progress(f"caching the wheels of {len(missing)} packages for later installs")
            wheel_cache.fill_from(shared, missing, index)
        except OSError as exc:
            self.progress(f"warning: the shared wheel cache was not filled: {exc}")

    def _shared_cache(self) -> WheelCache | None:
        """The home's shared wheel cache, unless it is off (HOST_WHEEL_CACHE_MB=0), the install is offline from
        a wheelhouse, an extra index is configured (a release may come from either index, so one fetched
        from the main index must not stand in for the other's), or the host is not root."""
        index = shared_index(self.settings.pip_args)
        if self.settings.wheel_cache_mb <= 0 or self.settings.wheelhouse is not None or index is None:
            return None
        if launch.plugin_uid(self.settings, 0) is None:
            # Not root: the installer runs as the host's own uid (in a user namespace), so only the sandbox's
            # read-only mount would keep it out of the cache, and a weak sandbox may have none.
            return None
        return WheelCache.of(self.layout.wheels, index, self.settings.wheel_cache_mb * launch.MiB)

    @staticmethod
    def _chown(name: str, tree: Path, uid: int, strip: int = 0) -> list[str]:
        """rootfs.chown_tree, its refusal as an install error; returns the hard links it left alone."""
        try:
            return rootfs.chown_tree(tree, uid, strip)
        except (UnsafeTree, OSError) as exc:
            raise InstallError(name, "preparing the plugin's files", str(exc)) from exc

    def _pip_egress(self, name: str) -> tuple[EgressPoint | None, int | None]:
        """pip (and the build code of every sdist it builds) gets its own network namespace whose only way
        out is the egress point, which lets it reach the configured package indexes and nothing else."""
        uid = launch.egress_uid(self.settings)
        if uid is None:
            return None, None  # not root: no namespace of our own to give (pip shares the host's network)
        urls = index_urls(self.settings.pip_args)
        grant = Grant(trusted=index_destinations(urls))
        point = EgressPoint(uid, lambda e: log.warning("pip for %s: egress refused %s: %s", name, e.get("dest"),
                                                     e.get("reason")))
        try:
            return point, point.attach(f"pip-{name}", grant)
        except OSError as exc:
            point.close()
            if self.settings.sandbox == "strict":
                raise InstallError(name, "installing packages", f"cannot isolate pip's network: {exc}") from exc
            return None, None

    def _run(self, name: str, step: str, argv: list[str], log_path: Path, timeout: float,
             cwd: Path | None = None, pass_fds: tuple[int, ...] = (), policy: Policy | None = None,
             env: dict[str, str] | None = None) -> None:
        """Run one step; ``policy``: it runs confined by the runner, whose exit report says what ended it."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "PYTHON", "UV_"))},
               "PIP_NO_INPUT": "1", **(env or {})}
        with open(log_path, "ab") as log:
            log.write(f"\n$ {shlex.join(redact(argv))}\n".encode())  # no index passwords in logs
            log.flush()
            try:
                proc = subprocess.run(argv, stdout=log, stderr=subprocess.PIPE, timeout=timeout, cwd=cwd,
                                      env=env, check=False, stdin=subprocess.DEVNULL, pass_fds=pass_fds)
            except subprocess.TimeoutExpired as exc:
                _ended(policy)
                raise InstallError(name, step, f"timed out after {timeout:.0f}s", log_path) from exc
            log.write(proc.stderr)
        report = _ended(policy)
        if proc.returncode != 0:
            raise InstallError(name, step, _why(proc.returncode, report, policy, proc.stderr), log_path)

    def _quota_after_install(self, name: str, failed_first: bool) -> None:
        """A failed first install takes its new disk image along. Otherwise the image stays mounted only
        while a supervisor serves (it unmounts them at shutdown): a bare `host install` leaves no mount."""
        if failed_first:
            remove(self.layout, name)
            return
        try:
            control.call(self.layout.control_socket, "ping", timeout=5.0)
        except HostError:
            release(self.layout, name, lazy=False)

    def _serving_install_ids(self, name: str) -> set[str]:
        """What a running supervisor actually serves (after a failed upgrade, an older install)."""
        try:
            st = control.call(self.layout.control_socket, "status", timeout=5.0)
        except HostError:
            return set()
        serving = st.get("plugins", {}).get(name, {}).get("install_id")
        return {serving} if serving else set()

    def _snapshot(self, manifest: Manifest, install_id: str, version: str, uid_index: int) -> None:
        """Copy the data dir for `host rollback` to the install being replaced, when it is small enough. Not
        being able to is a warning, not a failed upgrade."""
        limit = self.settings.snapshot_max_mb * launch.MiB
        if limit <= 0:
            return
        try:
            ensure_mounted(self.settings, manifest.name, Quota.of(manifest.permissions.resources),
                           launch.plugin_uid(self.settings, uid_index))  # the data is in its image
            snap = snapshots.take(self.layout, manifest.name, install_id, limit)
        except (HostError, OSError) as exc:
            self.progress(f"warning: the data dir was not snapshotted ({exc}); `host rollback` to {version} will "
                          "keep the data as it is")
            return
        if snap is None:
            self.progress(f"data dir over {self.settings.snapshot_max_mb} MiB (HOST_SNAPSHOT_MAX_MB): not snapshotted; "
                          f"`host rollback` to {version} keeps the data as it is")
        else:
            self.progress(f"snapshotted the data dir of {version} for `host rollback`")

    def _drop_old_installs(self, name: str, live: str, previous: str | None) -> None:
        """Keep the live install, what a running instance still uses, and the HOST_KEEP_INSTALLS newest earlier
        installs (for `host rollback`, with their data snapshots); remove the rest."""
        known = [i.install_id for i in self.registry.installs(name) if i.install_id != live]
        keep = {live, *self._serving_install_ids(name), *known[:self.settings.keep_installs]}
        if previous is not None and previous not in known:  # installed before installs were recorded
            keep.add(previous)
        for d in self.layout.plugin_root(name).iterdir():
            if d.is_dir() and d.name not in keep:
                rootfs.remove_tree(d)
        for gone in known[self.settings.keep_installs:]:
            if gone not in keep:
                self.registry.forget_install(name, gone)
        snapshots.forget(self.layout, name, keep)

    def rollback_target(self, name: str, to: str | None = None) -> InstallRecord:
        """The kept earlier install `host rollback` returns to: the newest, or the one whose version or install
        id is ``to``. UsageError (one line) when there is none."""
        rec = self.registry.require(name)
        kept = [i for i in self.registry.installs(name) if i.install_id != rec.install_id
                and self.layout.install_dir(name, i.install_id).is_dir() and to in (None, i.version, i.install_id)]
        if not kept:
            raise UsageError(f"no earlier install{f' {to}' if to else ''} is kept to roll back to (see "
                             "HOST_KEEP_INSTALLS)", plugin=name)
        return kept[0]

    def roll_back(self, name: str, to: str | None = None) -> tuple[str, str, bool]:
        """Make the newest kept earlier install (or the one whose version or install id is ``to``) live again,
        with the data dir as it was before the upgrade away from it when a snapshot was kept. The plugin must
        be stopped (host.operations.rollback). Returns (from version, to version, data restored). The current
        data is snapshotted first, to its own install, so a failed restore puts it back."""
        with locked_for(self.layout, name):
            rec = self.registry.require(name)
            target = self.rollback_target(name, to)
            restored = False
            if snapshots.path(self.layout, name, target.install_id).is_dir():
                manifest = parse_manifest(target.manifest, f"registry:{name}")
                ensure_mounted(self.settings, name, Quota.of(manifest.permissions.resources),
                               launch.plugin_uid(self.settings, rec.uid_index))
                current: Path | None = None
                try:
                    current = snapshots.take(self.layout, name, rec.install_id, 1 << 62)
                    restored = snapshots.restore(self.layout, name, target.install_id)
                except BaseException:
                    if current is not None:
                        snapshots.restore(self.layout, name, rec.install_id)
                    raise
                finally:
                    self._quota_after_install(name, failed_first=False)
            self.registry.roll_back(name, target.version, target.install_id, target.manifest,
                                    reason="host rollback" + (" (code and data)" if restored else " (code)"),
                                    who=self.who)
        return rec.version, target.version, restored

    def uninstall(self, name: str, *, keep_data: bool = False) -> list[str]:
        """Remove everything of the plugin but, with ``keep_data``, its data (and its uid, which owns that
        data); returns what was kept, in words."""
        with locked_for(self.layout, name):
            self.registry.require(name)
            self.registry.remove(name, keep_uid=keep_data, who=self.who)
            if not keep_data and launch.plugin_uid(self.settings, 0) is not None:
                UidFile(self.settings.uid_file).release(self.layout.home, name)
            # where pip's HOME used to be kept across installs (a build may have planted a pip.conf there)
            rootfs.remove_tree(self.layout.cache / "pip" / name)
            rootfs.remove_tree(self.layout.plugin_root(name))
            snapshots.forget(self.layout, name)  # the installs they belong to are gone
            rootfs.remove_tree(self.layout.run_dir(name))
            rootfs.remove_tree(self.layout.logs(name))
            for access in self.layout.access_logs.glob(f"{name}.log*"):  # host.access_log: .log and .log.1
                access.unlink(missing_ok=True)
            # its policy, sandbox and exit reports, passwd/group/hosts files: root's, in the root-only run/
            for leftover in self.layout.run.glob(f".{name}.*"):
                leftover.unlink(missing_ok=True)
            # Unmount first: deleting the data dir must remove the mount point, not the files in the image.
            if keep_data:
                release(self.layout, name, lazy=True)
            else:
                remove(self.layout, name)
            if not keep_data:
                rootfs.remove_tree(self.layout.data(name))
                return []
        kept = [str(p) for p in (self.layout.data(name), self.layout.disk_image(name)) if p.exists()]
        uid = launch.plugin_uid(self.settings, 0)
        return kept + (["its uid (in the machine-wide uid file), which owns that data"] if uid is not None else [])


def _ended(policy: Policy | None) -> ExitReport | None:
    """The runner's exit report of a confined step (removed once read). A runner that wrote none was
    killed (e.g. at the step's timeout): the cgroups it could not remove, and what is left in them, go."""
    if policy is None or policy.exit_path is None:
        return None
    report = ExitReport.read(Path(policy.exit_path))
    if report is None and policy.cgroup_name:
        cgroup.cleanup(policy.cgroup_name)
    return report


# what the kernel did matters more than the last line of output (often nothing, after a SIGKILL)
_KERNEL_CAUSES = (Cause.OOM, Cause.PID_LIMIT, Cause.CPU_LIMIT, Cause.FILE_SIZE, Cause.SIGNAL, Cause.KILLED, Cause.SETUP)


def _why(returncode: int, report: ExitReport | None, policy: Policy | None, stderr: bytes) -> str:
    """Why a step failed, classified like a running plugin's exit (host.exits), in one line."""
    lines = tuple(ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip())
    if policy is not None:
        res = policy.resources
        limits = Limits(res.memory_bytes // launch.MiB if res.memory_bytes else None, res.processes, res.cpu_seconds,
                        res.file_size_bytes // launch.MiB if res.file_size_bytes else None)
        info = classify(returncode, report, limits, during_start=False, setup_codes=SETUP_EXIT_CODES,
                        stderr_tail=lines[-10:])
        if info.cause in _KERNEL_CAUSES or not lines:
            return info.reason[:300]
    return _last_line(lines)


def _last_line(lines: tuple[str, ...]) -> str:
    # pip puts the useful sentence in the last ERROR line; tracebacks end with the exception line
    mismatch = _hash_mismatch(lines)
    if mismatch:
        return mismatch
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    pick = errors[0] if errors else (lines[-1] if lines else "failed with no output")
    return pick[:300]


def _hash_mismatch(lines: tuple[str, ...]) -> str | None:
    """pip's or uv's --require-hashes refusal, as one line naming the first package and both hashes."""
    found: tuple[str, str, str] | None = None
    for i, line in enumerate(lines):
        if line.startswith("Expected sha256") and 0 < i < len(lines) - 1:  # pip
            found = lines[i - 1].split(" from ", 1)[0], line.split()[-1], lines[i + 1].split()[-1]
        elif "Hash mismatch for `" in line and i + 4 < len(lines):  # uv: Expected:, sha256:..., Computed:, ...
            found = line.split("`")[1], lines[i + 2].removeprefix("sha256:"), lines[i + 4].removeprefix("sha256:")
        if found:
            package, expected, got = found
            return (f"{package}: its sha256 is {got}, but {lockfile.LOCK_FILE} says {expected} (changed since it "
                    "was locked? refusing it)")
    return None


def _base_python() -> str:
    """The real interpreter behind the host (not the host's own venv)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))

