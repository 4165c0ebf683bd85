"""`host apply FILE` and `host export`: make the installed plugins match a file, and write the file they match.

Three steps, each small enough to move: :func:`resolve` checks the whole file against the sources it names and
the host (every problem, one line each; nothing is changed while there is one), :func:`plan` compares it with
:func:`current` (pure: the unit tests drive it), :func:`execute` makes the changes through host.operations and the
installer, printing one line per change. What `host apply` installed from (its source) and with (its grant) is
remembered per install, so `host export` writes them back.
Imports neither Flask nor the supervisor.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host import archive, config_file, consent, control, operations, plugin_settings
from host.bundle import SKIP_DIRS, SKIP_SUFFIXES
from host.config_file import SECRETS_NOTE, DesiredState, PluginSpec
from host.errors import HostError, SettingsError, UsageError
from host.installer import Installer
from host.layout import Layout
from host.registry import PluginRecord, Registry
from host.settings import HostSettings
from host.terminal import printable
from manifests import Manifest, ManifestError, Permissions, load_manifest, parse_manifest
from manifests.entrypoint import check_entrypoint
from manifests.settings import Value

RECORD_KEY = "declared:{name}"  # registry setting: {"install_id", "source", "grant"} of the live install
Progress = Callable[[str], None]


class InvalidConfig(UsageError):
    """The file cannot be applied; ``problems``: one line each. Nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}; nothing was changed")


@dataclass(frozen=True)
class Resolved:
    """A checked ``[[plugin]]``: its source on disk, the plugin tree in it, its manifest and settings."""

    spec: PluginSpec
    source: Path  # absolute, as recorded
    tree: Path  # the plugin directory (for an archive: where it was extracted)
    manifest: Manifest
    values: dict[str, Value]  # spec.settings checked against the manifest
    digest: str


@dataclass(frozen=True)
class Current:
    """What the host has for one plugin."""

    version: str
    enabled: bool
    settings: dict[str, Value]
    digest: str | None
    source: str  # as recorded, or the installed copy (see provenance)
    grant: Permissions


@dataclass(frozen=True)
class Change:
    kind: str  # install | upgrade | reinstall | disable | settings | enable | record | uninstall
    name: str
    line: str
    keys: tuple[str, ...] = field(default=())


# -- content ------------------------------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """sha256 over what an install copies of ``root`` (host.bundle's rules: build debris skipped, a symlink
    counted as the file it points to inside the tree), so a source and its installed copy hash alike."""
    h = hashlib.sha256()
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / name
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(base) or not stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode):
                continue  # the install skips it too
            rel = path.relative_to(base).as_posix()
            h.update(f"{len(rel)}:{rel}:{real.stat().st_size}:".encode())
            with open(real, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


# -- step 1: resolve ----------------------------------------------------------------------------------------


def resolve(state: DesiredState, base: Path, registry: Registry, layout: Layout, stack: ExitStack,
            where: str) -> tuple[list[Resolved], list[str]]:
    """Check every entry against its source and the host. Returns (the entries, one line per problem)."""
    problems: list[str] = []
    seen: set[str] = set()
    out: list[Resolved] = []
    for spec in state.plugin:
        say = f"{where}: {spec.name}"
        if spec.name in seen:
            problems.append(f"{say}: listed twice")
            continue
        seen.add(spec.name)
        try:
            r = _resolve_one(spec, base, layout, stack)
        except (ManifestError, HostError, OSError) as exc:
            problems.append(f"{say}: {printable(exc)}")
            continue
        found = _check(r, registry)
        problems += [f"{say}: {p}" for p in found]
        if not found:
            out.append(r)
    return out, problems


def _resolve_one(spec: PluginSpec, base: Path, layout: Layout, stack: ExitStack) -> Resolved:
    source = (base / spec.source).absolute()
    if not source.is_dir() and not source.is_file():
        raise UsageError(f"source {source}: no such plugin directory or archive")
    # an archive is unpacked (by its content, with host.archive's limits) into a scratch dir that lives until
    # the apply is done: the install copies from it, so what was checked is what is installed
    tree = stack.enter_context(archive.unpacked(source, layout))
    manifest = load_manifest(tree)
    check_entrypoint(tree, manifest)
    if manifest.name != spec.name:
        raise UsageError(f"source {source} is plugin {manifest.name!r}, not {spec.name!r}")
    values = _checked_settings(manifest, spec)
    return Resolved(spec, source, tree, manifest, values, tree_digest(tree))


def _checked_settings(manifest: Manifest, spec: PluginSpec) -> dict[str, Value]:
    """Each key checked on its own, so every bad one is reported; raises the first as one line per key."""
    values: dict[str, Value] = {}
    bad: list[str] = []
    for key, value in spec.settings.items():
        try:
            values.update(plugin_settings.parse_mapping(manifest, {key: value}))
        except SettingsError as exc:
            bad.append(f"settings.{key}: {str(exc).removeprefix(f'{manifest.name}: {key}: ')}")
    if bad:
        raise UsageError("; ".join(bad))
    return values


def _check(r: Resolved, registry: Registry) -> list[str]:
    """What the operator's grant does not cover, and required settings no one gives a value."""
    granted = r.spec.grant.model_dump(mode="json")
    problems = [f"asks for more than its grant: {line}" for line in consent.excess(r.manifest, granted)]
    if r.spec.enabled:
        stored = registry.plugin_settings(r.spec.name) if registry.get(r.spec.name) else {}
        absent = plugin_settings.missing(r.manifest, {**stored, **r.values})
        if absent:
            problems.append(f"settings: {', '.join(absent)} required (enabled = true), and neither the file nor "
                            "the host has a value")
    return problems


# -- step 2: plan -------------------------------------------------------------------------------------------


def current(settings: HostSettings, registry: Registry) -> dict[str, Current]:
    layout = Layout(settings.home_dir)
    out: dict[str, Current] = {}
    for rec in registry.all():
        manifest = parse_manifest(rec.manifest, f"registry:{rec.name}")
        bundle = layout.install_dir(rec.name, rec.install_id) / "bundle"
        source, grant, _ = provenance(registry, layout, rec, manifest)
        out[rec.name] = Current(rec.version, rec.enabled,
                                plugin_settings.stored_values(manifest, registry.plugin_settings(rec.name)),
                                tree_digest(bundle) if bundle.is_dir() else None, source, grant)
    return out


def plan(wanted: list[Resolved], have: dict[str, Current], prune: bool = False) -> list[Change]:
    """The changes that make ``have`` match ``wanted``, in the order they are made; empty when converged."""
    changes: list[Change] = []
    for r in wanted:
        name, m, spec = r.spec.name, r.manifest, r.spec
        cur = have.get(name)
        if cur is None:
            changes.append(Change("install", name, f"+ {name} {m.version} installed"
                                  + ("" if spec.enabled else " (disabled)")))
            continue
        reinstalled = True
        if cur.version != m.version:
            changes.append(Change("upgrade", name, f"~ {name} {cur.version} -> {m.version} upgraded"))
        elif cur.digest != r.digest:
            changes.append(Change("reinstall", name, f"~ {name} {m.version} reinstalled: its content changed"))
        else:
            reinstalled = False
        if cur.enabled and not spec.enabled:
            changes.append(Change("disable", name, f"- {name} disabled"))
        keys = tuple(k for k, v in r.values.items() if k not in cur.settings or cur.settings[k] != v)
        if keys:
            changes.append(Change("settings", name, f"~ {name} settings: {', '.join(keys)}", keys))
        if spec.enabled and not cur.enabled:
            changes.append(Change("enable", name, f"+ {name} enabled"))
        stale = [what for what, differs in (("source", cur.source != str(r.source)),
                                            ("grant", cur.grant != spec.grant)) if differs]
        if stale and not reinstalled:
            changes.append(Change("record", name, f"~ {name} {' and '.join(stale)} recorded"))
    if prune:
        listed = {r.spec.name for r in wanted}
        changes += [Change("uninstall", n, f"- {n} uninstalled") for n in sorted(have) if n not in listed]
    return changes


# -- step 3: execute ----------------------------------------------------------------------------------------


def execute(settings: HostSettings, registry: Registry, wanted: list[Resolved], changes: list[Change], who: str,
            progress: Progress, emit: Callable[[str], None]) -> None:
    """Make ``changes``, emitting each line once it is made; then wait until a running host serves what was
    installed or enabled. HostError on the first failure (what was emitted is done)."""
    layout = Layout(settings.home_dir)
    by_name = {r.spec.name: r for r in wanted}
    installed: dict[str, str] = {}  # name -> the install id it now has
    for ch in changes:
        r = by_name.get(ch.name)
        if ch.kind in ("install", "upgrade", "reinstall") and r is not None:
            installed[ch.name] = _install(settings, registry, r, who, progress)
        elif ch.kind in ("enable", "disable"):
            operations.set_enabled(settings, registry, layout, ch.name, ch.kind == "enable", who)
        elif ch.kind == "settings" and r is not None and ch.name not in installed:  # an install stored them
            operations.change_settings(settings, registry, layout, ch.name, {k: r.values[k] for k in ch.keys},
                                       (), who, progress)
        elif ch.kind == "record" and r is not None:
            remember(registry, ch.name, r.source, r.spec.grant, who)
        elif ch.kind == "uninstall":
            operations.uninstall(settings, registry, layout, ch.name, who, progress)
            registry.set_setting(RECORD_KEY.format(name=ch.name), None, plugin=ch.name, who=who)
        emit(ch.line)
    if installed:
        _serve(settings, layout, {n: i for n, i in installed.items() if by_name[n].spec.enabled}, progress)


def _install(settings: HostSettings, registry: Registry, r: Resolved, who: str, progress: Progress) -> str:
    existing = registry.get(r.spec.name)
    words = [f"{k}={_text(v)}" for k, v in r.values.items()]
    result = Installer(settings, registry, progress, who=who).install(
        r.tree, enable=r.spec.enabled if existing is None else existing.enabled, force=True, settings=words)
    remember(registry, r.spec.name, r.source, r.spec.grant, who, result.install_id)
    return result.install_id


def _text(value: Value) -> str:
    """A checked value as `host install --set` text that parses back to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _serve(settings: HostSettings, layout: Layout, installed: dict[str, str], progress: Progress) -> None:
    """A running host switches to what was installed; HostError naming each one that did not come up (after a
    failed upgrade the previous install keeps serving: the supervisor says which one serves)."""
    if operations.tell(layout, "reload") is None:
        progress("run `host serve` to start them")
        return
    failed = []
    for name, install_id in installed.items():
        reply = control.call(layout.control_socket, "start", name=name, wait=settings.start_timeout + 5,
                             timeout=settings.start_timeout + 10)
        st = reply["plugin"]
        if st["state"] not in ("running", "degraded"):
            failed.append(f"{name} is {st['state']}: {printable(st.get('reason'))}")
        elif st.get("install_id") not in (None, install_id):
            failed.append(f"{name}: the new install did not start; the previous one keeps serving: "
                          f"{printable(st.get('reason'))}")
    if failed:
        raise HostError("installed, but not serving: " + "; ".join(failed))


# -- what was installed from, and with ----------------------------------------------------------------------


def remember(registry: Registry, name: str, source: Path, grant: Permissions, who: str,
             install_id: str | None = None) -> None:
    """Record what plugin ``name``'s live install came from and what it was granted (for `host export`)."""
    live = install_id or registry.require(name).install_id
    body = {"install_id": live, "source": str(source), "grant": grant.model_dump(mode="json")}
    registry.set_setting(RECORD_KEY.format(name=name), json.dumps(body, sort_keys=True), plugin=name, who=who)


def recorded(registry: Registry, name: str, install_id: str) -> tuple[str, Permissions] | None:
    """(source, grant) recorded for this very install; None for one made before installs were recorded."""
    raw = registry.get_setting(RECORD_KEY.format(name=name))
    try:
        body = json.loads(raw) if raw else {}
        if body.get("install_id") != install_id:
            return None
        return str(body["source"]), Permissions.model_validate(body["grant"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def provenance(registry: Registry, layout: Layout, rec: PluginRecord, manifest: Manifest
               ) -> tuple[str, Permissions, str | None]:
    """(source, grant, why the source is the installed copy, or None). An install older than the record (`host
    apply` and `host install` make one) has its installed copy as source and, as grant, what its manifest asked
    for: what the operator accepted when installing it. So has one whose recorded source is gone (a deleted
    checkout, an upload's scratch directory): the copy is what it runs, and stays as long as the install."""
    copy = str(layout.install_dir(rec.name, rec.install_id) / "bundle")
    known = recorded(registry, rec.name, rec.install_id)
    if known is None:
        return copy, manifest.permissions, ("installed before sources were recorded: the source is its installed "
                                            "copy, the grant what it asked for and the operator accepted")
    if not os.path.exists(known[0]):
        return copy, known[1], f"installed from {known[0]}, which is gone: the source is its installed copy"
    return known[0], known[1], None


# -- export -------------------------------------------------------------------------------------------------


def export(settings: HostSettings, registry: Registry) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The installed plugins as file entries, and comment lines per plugin (what the entries leave out)."""
    layout = Layout(settings.home_dir)
    entries: list[dict[str, Any]] = []
    notes: dict[str, list[str]] = {}
    for rec in registry.all():
        manifest = parse_manifest(rec.manifest, f"registry:{rec.name}")
        stored = plugin_settings.stored_values(manifest, registry.plugin_settings(rec.name))
        secrets = [k for k in stored if manifest.settings[k].secret]
        source, grant, why = provenance(registry, layout, rec, manifest)
        said = [why] if why else []
        entry: dict[str, Any] = {"name": rec.name, "source": source, "enabled": rec.enabled}
        if secrets:
            entry["secrets_omitted"] = secrets
            said.append(f"{SECRETS_NOTE}: {', '.join(secrets)}")
        entry["settings"] = {k: v for k, v in stored.items() if k not in secrets}
        entry["grant"] = grant.model_dump(mode="json", exclude_defaults=True)
        entries.append(entry)
        if said:
            notes[rec.name] = said
    return entries, notes


def load(path: Path, registry: Registry, layout: Layout, stack: ExitStack) -> tuple[list[Resolved], list[str]]:
    """Read and resolve ``path`` (sources relative to its directory; ``-``: to the working directory)."""
    state, problems = config_file.read(path)
    if state is None:
        return [], problems
    base = Path.cwd() if str(path) == "-" else path.absolute().parent
    return resolve(state, base, registry, layout, stack, str(path))
