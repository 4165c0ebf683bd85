"""The `host` command line (also installed as `plugin-host`). Tiny main(); each command calls one module."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from host import apply_cli, control, hooks_cli, operations, origins, sign_cli, users_cli
from host.errors import HostError, NotGranted, SupervisorUnavailable, UsageError
from host.installer import Installer
from host.layout import Layout
from host.operations import local_who
from host.quota import disk_usage, usage_cell
from host.registry import Registry
from host.settings import HostSettings
from host.terminal import permission_denied, printable
from manifests import Manifest, ManifestError, json_schema, load_manifest


class Ctx:
    def __init__(self, home: Path | None) -> None:
        self.overrides: dict[str, Any] = {"home": home} if home else {}
        self._settings: HostSettings | None = None

    def settings(self, **more: Any) -> HostSettings:
        given = {k: v for k, v in more.items() if v is not None}
        if given:
            return HostSettings(**{**self.overrides, **given})
        if self._settings is None:  # built once: reading the environment and validating costs ~10 ms a time
            self._settings = HostSettings(**self.overrides)
        return self._settings

    def layout(self, create: bool = False) -> Layout:
        """The home. Only `install` and `serve --create` make a new one: any other command on a home that
        does not exist (a misspelt --home) is bad input, not a reason to start an empty host."""
        layout = Layout(self.settings().home_dir)
        if not create and not layout.registry.exists():
            raise UsageError(f"no plugin host at {layout.home} (check --home / HOST_HOME; `host install` creates "
                             "one, `host serve --create` an empty one)")
        layout.ensure()
        return layout


def progress(msg: str) -> None:
    """One progress line; it may quote a manifest, a bundle's file names or pip's output."""
    click.echo(f"==> {printable(msg)}", err=True)


class _Done:
    """What a command returns when nothing is left to run at exit (see _leave)."""


DONE = _Done()


def _supervisor(layout: Layout, op: str, **args: Any) -> dict[str, Any] | None:
    """Tell a running supervisor; None when none runs (the change applies at the next `host serve`)."""
    try:
        return control.call(layout.control_socket, op, **args)
    except SupervisorUnavailable:
        return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path, readable=False), envvar="HOST_HOME",
              help="Home directory (registry, plugins, data, sockets, logs). Default: $HOST_HOME or ./var. It "
                   "must exist, except for `install`, `apply` and `serve --create`, which create it.")
@click.version_option(package_name="plugin-host")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """Plugin Host: run untrusted Flask plugins in sandboxed subprocesses behind one reverse proxy."""
    ctx.obj = Ctx(home)


def permission_summary(m: Manifest) -> list[str]:
    """What the plugin may do, the layer enforcing each grant, and its risk score."""
    from host.risk import assess, grants

    risk = assess(m)
    lines = [
        f"plugin:      {m.name} {m.version} — {m.description or 'no description'}",
        f"entrypoint:  {m.entrypoint} ({'WSGI app' if m.is_wsgi_entrypoint else 'PluginBase module'})",
        f"packages:    {', '.join(m.requirements) or 'none beyond the runtime (flask, gunicorn)'}",
    ]
    lines += [f"{g.permission + ':':<16} {g.value:<44} [{g.enforced_by}]" for g in grants(m)]
    lines.append(f"risk:        {risk.score}/8  ({'; '.join(risk.reasons)})")
    return [printable(line) for line in lines]


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--grant", metavar="FILE", type=click.Path(allow_dash=True),
              help="Consent without a terminal: the permissions you grant, shaped like the manifest's "
                   "[permissions] (FILE.json, FILE.toml, or '-' for standard input). A plugin asking for more is "
                   "refused, one line per permission, and nothing is installed. Use instead of --yes.")
@click.option("--yes", "-y", is_flag=True, help="Grant the requested permissions without asking (but not an upgrade's "
              "widening of them: see --grant-widened).")
@click.option("--grant-widened", is_flag=True, help="Grant what an upgrade adds to the installed version's "
              "permissions (a new egress destination, more memory...), which --yes alone does not; implies --yes.")
@click.option("--no-enable", is_flag=True, help="Install but leave disabled.")
@click.option("--force", is_flag=True, help="Reinstall even if this version is already installed.")
@click.option("--set", "values", multiple=True, metavar="KEY=VALUE",
              help="A value for one of the plugin's [settings] (repeatable); see `host config`.")
@click.option("--allow-downgrade", is_flag=True,
              help="Install a version older than the highest one installed here before (audited).")
@click.option("--trust-new-key", is_flag=True,
              help="Accept a bundle signed by another key than the plugin's pinned publisher, and pin that key "
                   "(audited). Prefer a succession statement from the old key (`host sign --previous-key`).")
@click.pass_obj
def install(obj: Ctx, path: Path, grant: str | None, yes: bool, no_enable: bool, force: bool,
            values: tuple[str, ...], allow_downgrade: bool, trust_new_key: bool, grant_widened: bool) -> _Done:
    """Install the plugin in PATH (a directory, or a .zip, .tar.gz/.tgz or .tar archive of one) into its own
    virtualenv."""
    from host import archive, consent, declarative, upgrades
    from host.trust import Overrides

    if grant is not None and yes:
        raise UsageError("--grant replaces --yes: pass one of them")
    granted = consent.load_grant(grant) if grant is not None else None
    if granted is not None:
        consent.parse_grant(granted)  # a bad grant is bad input before anything happens

    settings = obj.settings()
    layout = obj.layout(create=True)
    registry = Registry(layout.registry)

    def confirm(m: Manifest) -> bool:
        for line in permission_summary(m):
            click.echo(f"    {line}", err=True)
        diff = upgrades.diff_for(registry, layout, m)
        for line in diff.lines() if diff else ():
            click.echo(f"    {printable(line)}", err=True)
        if granted is not None:  # an explicit grant is consent to everything it covers, a widening too
            beyond = consent.excess(m, granted)
            if beyond:
                raise NotGranted(m.name, beyond)
            return True
        if diff is not None and diff.widened and not grant_widened:
            if yes or not sys.stdin.isatty():
                raise diff.refusal(m.name)
            return click.confirm("Grant the widened permissions and upgrade?", default=False, err=True)
        if yes or grant_widened:
            return True
        if not sys.stdin.isatty():
            raise click.UsageError("grant these permissions interactively, or pass --grant FILE (or --yes)")
        return click.confirm("Install with these permissions?", default=False, err=True)

    t0 = time.monotonic()
    with archive.unpacked(path, layout, progress=progress) as bundle:
        result = Installer(settings, registry, progress, who=local_who()).install(
            bundle, enable=not no_enable, force=force, confirm=confirm, settings=values,
            overrides=Overrides(allow_downgrade=allow_downgrade, trust_new_key=trust_new_key))
    if not result.changed:
        return DONE
    name = result.manifest.name
    # for `host export`: where it came from, and what was granted (--grant, else what it asked and was accepted)
    declarative.remember(registry, name, path.absolute(), result.manifest.permissions if granted is None else
                         consent.parse_grant(granted), local_who(), result.install_id)
    progress(f"installed {name} {result.manifest.version} in {time.monotonic() - t0:.1f}s")
    if result.missing_settings:
        keys = result.missing_settings
        progress(f"set {', '.join(keys)} before it can start: host config {name} "
                 + " ".join(f"{k}=..." for k in keys) + " (or --from-file FILE.json|.toml|-)")
        if not no_enable:
            _supervisor(layout, "reload")
        return DONE
    if no_enable:
        return DONE
    if _supervisor(layout, "reload") is None:
        urls = origins.public_urls(name, settings.bind, settings.origin_domain, settings.path_mode)
        progress(f"run `host serve` to start it; it will be at {' and '.join(urls)}")
        return DONE
    progress("starting")
    reply = control.call(layout.control_socket, "start", name=name, wait=settings.start_timeout + 5,
                         timeout=settings.start_timeout + 10)
    st = reply["plugin"]
    if st["state"] not in ("running", "degraded"):
        raise HostError(f"installed, but it is {st['state']}: {printable(st.get('reason'))}", plugin=name)
    if st.get("install_id") not in (None, result.install_id):
        raise HostError(f"installed {result.manifest.version}, but it did not start; the previous version keeps "
                        f"serving: {printable(st.get('reason'))}", plugin=name)
    serving = control.call(layout.control_socket, "status", timeout=10).get("serving", {})
    urls = origins.public_urls(name, serving.get("bind", settings.bind),
                               serving.get("plugin_domain", settings.origin_domain),
                               serving.get("path_mode", settings.path_mode))
    progress(f"healthy: serving at {' and '.join(urls)}")
    return DONE


@cli.command()
@click.argument("name")
@click.option("--keep-data", is_flag=True, help="Keep the plugin's data directory.")
@click.pass_obj
def uninstall(obj: Ctx, name: str, keep_data: bool) -> None:
    """Stop and remove plugin NAME."""
    layout = obj.layout()
    kept = operations.uninstall(obj.settings(), Registry(layout.registry), layout, name, local_who(), progress,
                                keep_data=keep_data)
    progress(f"uninstalled {name}: " + (f"kept {', '.join(kept)} (--keep-data)" if kept else
                                        "nothing of it is left but its events in the audit log"))


@cli.command()
@click.argument("name")
@click.option("--to", metavar="VERSION", help="The kept install to return to (a version or install id); default: "
              "the newest one before the live install.")
@click.pass_obj
def rollback(obj: Ctx, name: str, to: str | None) -> None:
    """Return plugin NAME to its previous install (kept on disk, see HOST_KEEP_INSTALLS), with its data dir as
    it was before the upgrade when a snapshot was kept (HOST_SNAPSHOT_MAX_MB). The plugin is stopped meanwhile."""
    layout = obj.layout()
    old, new, restored = operations.rollback(obj.settings(), Registry(layout.registry), layout, name, local_who(),
                                             progress, to)
    progress(f"rolled back {name} {old} → {new}: " + ("code and data (the snapshot taken before the upgrade)"
                                                      if restored else "code; no data snapshot was kept, the data "
                                                      "is as it was"))


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(obj: Ctx, as_json: bool) -> None:
    """Installed plugins: name, version, state, pid, restarts."""
    from host.signing import signature_badge

    layout = obj.layout()
    registry = Registry(layout.registry)
    records = registry.all()
    status = _supervisor(layout, "status") or {}
    live = status.get("plugins", {})
    rows = []
    for r in records:
        st = live.get(r.name, {})
        state = st.get("state") or ("stopped" if status else "not serving")
        rows.append({"name": r.name, "version": r.version, "enabled": r.enabled,
                     "state": state if r.enabled else "disabled", "pid": st.get("pid"),
                     "restarts": st.get("restarts", 0), "reason": st.get("reason"),
                     "failures": st.get("failures", 0), "last_exit": st.get("last_exit"),
                     "egress_refused": st.get("egress_refused", 0),
                     "signature": signature_badge(registry.provenance(r.name, r.install_id))})
    # None: no disk image mounted (the host is not serving, or runs without the disk layer)
    disks = {r.name: disk_usage(layout, r.name) for r in records}
    for row in rows:
        use = disks[str(row["name"])]
        row["disk"] = use.as_dict() if use else None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
        return
    click.echo(f"{'NAME':<20} {'VERSION':<10} {'SIGNED':<16} {'STATE':<12} {'PID':<8} {'RESTARTS':<8} {'DISK':<30} "
               "REASON")
    for row in rows:
        sig = row["signature"]
        click.echo(printable(f"{row['name']:<20} {row['version']:<10} {sig['badge']:<16} {row['state']:<12} "
                             f"{row['pid'] or '-'!s:<8} "
                             f"{row['restarts']:<8} {usage_cell(disks[row['name']]):<30} {row['reason'] or ''}"))


@cli.command()
@click.argument("name")
@click.option("-n", "lines", type=click.IntRange(min=1), default=20, show_default=True, help="History entries.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: Ctx, name: str, lines: int, as_json: bool) -> None:
    """Plugin NAME's state, why it is not running (if so), and its history: when it started, failed or was
    stopped, why, and how long each instance ran."""
    from host import history

    settings = obj.settings()
    layout = obj.layout()
    registry = Registry(layout.registry)
    rec = registry.require(name)
    live = _supervisor(layout, "status")
    st = history.status(name, rec.version, rec.enabled, (live or {}).get("plugins", {}).get(name), live is not None,
                        history.history(registry, name, lines))
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    policy = (live or {}).get("policy") or {}  # the serving host's settings, which may differ from ours
    for line in history.render(st, float(policy.get("failure_window", settings.failure_window)),
                               int(policy.get("max_failures", settings.max_failures))):
        click.echo(line)


def _set_enabled(obj: Ctx, name: str, enabled: bool) -> None:
    """Enable (and start) or disable (and stop) with host.operations, as the admin API does."""
    layout = obj.layout()
    changed, told = operations.set_enabled(obj.settings(), Registry(layout.registry), layout, name, enabled,
                                           local_who())
    verb = "enabled" if enabled else "disabled"
    progress(f"{name} {verb}" + ("" if changed else " (already)") + ("" if told else "; takes effect at `host serve`"))


@cli.command()
@click.argument("name")
@click.pass_obj
def enable(obj: Ctx, name: str) -> None:
    """Enable plugin NAME (starts it if the host is serving; clears quarantine)."""
    _set_enabled(obj, name, True)


@cli.command()
@click.argument("name")
@click.pass_obj
def disable(obj: Ctx, name: str) -> None:
    """Disable plugin NAME: requests get 404 at once, and it has stopped (SIGTERM, HOST_STOP_GRACE seconds, then
    SIGKILL of its whole tree) when this returns, whatever the plugin does meanwhile."""
    _set_enabled(obj, name, False)


@cli.command()
@click.argument("name")
@click.pass_obj
def restart(obj: Ctx, name: str) -> None:
    """Restart plugin NAME with no downtime (clears quarantine)."""
    layout = obj.layout()
    st = operations.restart(obj.settings(), Registry(layout.registry), layout, name, local_who())
    progress(f"{name} restarted (pid {st['pid']})")


@cli.command()
@click.argument("name")
@click.argument("assignments", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--from-file", type=click.Path(path_type=Path, allow_dash=True), metavar="FILE",
              help="Values from FILE.json or FILE.toml; '-' reads JSON from standard input (keeps secrets out "
                   "of the command line, which others can see in ps).")
@click.option("--unset", multiple=True, metavar="KEY", help="Forget KEY's value (its default applies again).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (secrets still ••••).")
@click.option("--schema", is_flag=True, help="Print the JSON Schema of NAME's settings.")
@click.option("--idle-timeout", type=click.FloatRange(min=0),
              help="Scale to zero: stop after this many idle seconds, start on the next request (0 = never).")
@click.option("--reset", is_flag=True, help="Drop this plugin's idle-timeout override (use the host setting).")
@click.pass_obj
def config(obj: Ctx, name: str, assignments: tuple[str, ...], from_file: Path | None, unset: tuple[str, ...],
           as_json: bool, schema: bool, idle_timeout: float | None, reset: bool) -> None:
    """Show or set plugin NAME's settings (its manifest's [settings]) and operator overrides.

    `host config NAME key=value ...` checks each value against the manifest, stores it and restarts the
    plugin with no downtime. Secret values are never shown again (••••)."""
    from host import configure
    from manifests.settings import values_schema

    settings = obj.settings()
    layout = obj.layout()
    registry = Registry(layout.registry)
    registry.require(name)
    if schema:
        click.echo(json.dumps(values_schema(configure.manifest_of(registry, name).settings), indent=2))
        return
    key = f"idle_timeout:{name}"
    if reset:
        registry.set_setting(key, None, plugin=name, who=local_who())
    elif idle_timeout is not None:
        registry.set_setting(key, repr(idle_timeout), plugin=name, who=local_who())
    configure.change(settings, registry, name, assignments, from_file, unset, progress, who=local_who())
    shown = configure.view(settings, registry, name)
    if as_json:
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    for line in configure.render(shown):
        click.echo(line)


@cli.command()
@click.option("--bind", help="HOST:PORT for the web tier (default 127.0.0.1:8000).")
@click.option("--workers", type=int, help="Web tier worker processes.")
@click.option("--admin-bind", metavar="HOST:PORT",
              help="The admin listener: admin API, UI and /metrics on their own origin (default 127.0.0.1:8001; "
                   "\"\" = none). Same as HOST_ADMIN_BIND.")
@click.option("--plugin-domain", metavar="DOMAIN",
              help="Serve each plugin on its own origin, <name>.DOMAIN (default: localhost when --bind is a "
                   "loopback address, else none; \"\" = off). Same as HOST_PLUGIN_DOMAIN.")
@click.option("-v", "--verbose", is_flag=True, help="Also echo plugin output to the console.")
@click.option("--create", is_flag=True, help="Create the home if it does not exist (otherwise that is an error).")
@click.pass_obj
def serve(obj: Ctx, bind: str | None, workers: int | None, admin_bind: str | None, plugin_domain: str | None,
          verbose: bool, create: bool) -> None:
    """Run the supervisor, every enabled plugin and the web tier until SIGTERM/Ctrl-C. Exits 1 with one line
    when the port cannot be bound."""
    from host.supervisor import serve as supervisor

    obj.layout(create=create)
    settings = obj.settings(bind=bind, web_workers=workers, plugin_domain=plugin_domain, admin_bind=admin_bind)
    supervisor.handoff(settings, verbose=verbose)  # this process becomes the supervisor, without the CLI's imports


@cli.command()
@click.argument("name")
@click.option("-n", "lines", type=int, default=50, show_default=True, help="Lines to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output.")
@click.option("--previous", is_flag=True, help="The previous instance's log.")
@click.option("--access", is_flag=True, help="The access log instead: one line per request (time, client, method, "
              "path without query string, status, bytes in and out, duration).")
@click.pass_obj
def logs(obj: Ctx, name: str, lines: int, follow: bool, previous: bool, access: bool) -> None:
    """Show plugin NAME's output (stdout and stderr), or with --access the requests it was sent."""
    from host.supervisor.logs import CURRENT, PREVIOUS

    layout = obj.layout()
    Registry(layout.registry).require(name)
    if access:
        _access_log(layout, name, lines, follow)
        return
    path = layout.logs(name) / (PREVIOUS if previous else CURRENT)
    if not path.exists():
        raise HostError(f"no {'previous ' if previous else ''}log yet ({path})", plugin=name)
    with open(path, "rb") as fh:
        tail = fh.read().splitlines()[-lines:] if lines > 0 else []
        for ln in tail:
            click.echo(printable(ln.decode(errors="replace"), multiline=True))
        while follow:
            chunk = fh.read()
            if chunk:
                click.echo(printable(chunk.decode(errors="replace"), multiline=True), nl=False)
            else:
                time.sleep(0.2)


def _access_log(layout: Layout, name: str, lines: int, follow: bool) -> None:
    from host.access_log import format_entry, log_path, open_current, read_access

    for record in read_access(layout, name, lines):
        click.echo(printable(format_entry(record)))
    if not follow:
        return
    fh = open_current(layout, name)  # the web user's directory: no link followed, no FIFO opened
    if fh is None:
        raise HostError(f"no access log yet ({log_path(layout, name)})", plugin=name)
    with fh:
        fh.seek(0, os.SEEK_END)
        while True:  # a rotation starts a new file, which `host logs --access` shows when run again
            line = fh.readline()
            if not line.endswith(b"\n"):
                fh.seek(-len(line), os.SEEK_CUR)
                time.sleep(0.2)
                continue
            try:
                click.echo(printable(format_entry(json.loads(line))))
            except ValueError:
                continue


NOT_IMPORTED = ("not imported: `host check` runs none of the plugin's code; `host install` imports it under "
                "its sandbox before registering it")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(path: Path, as_json: bool) -> None:
    """Validate the plugin in directory PATH (its manifest, and that its entrypoint exists, found without
    running it) and show what it would be allowed to do. Exit 2 when it is invalid."""
    from host.risk import assess, grants
    from manifests.entrypoint import check_entrypoint

    m = load_manifest(path)
    found = check_entrypoint(path, m)
    if as_json:
        risk = assess(m)
        click.echo(json.dumps({
            "name": m.name, "version": m.version,
            "entrypoint": {"spec": m.entrypoint, "found": found, "imported": False, "note": NOT_IMPORTED},
            "grants": [{"permission": g.permission, "value": g.value, "enforced_by": g.enforced_by}
                       for g in grants(m)],
            "risk": {"score": risk.score, "reasons": list(risk.reasons)}}, indent=2))
        return
    for line in permission_summary(m):
        click.echo(line)
    click.echo(printable(f"entrypoint:  {found}; {NOT_IMPORTED}"))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Probe which sandbox layers this machine can enforce."""
    from host.egress import netns
    from host.quota import LAYER, probe_disk
    from sandbox_runner.probe import probe

    report = probe()
    report[LAYER] = probe_disk(HostSettings())  # the host mounts it, not the runner
    ok, detail = netns.available() if os.geteuid() == 0 else (False, "needs a root host: plugins with a network "
                                                              "grant cannot start in strict mode")
    report["egress"] = {"available": ok, "detail": detail}
    weak = HostSettings().sandbox == "weak"
    for info in report.values():
        # strict: every layer is required, so an available layer is used and a missing one blocks starts
        info["used"] = bool(info["available"])
    isolation = origin_report(HostSettings())
    if as_json:
        click.echo(json.dumps({**report, "origins": isolation}, indent=2))
        return
    click.echo(f"{'LAYER':<14} {'AVAILABLE':<10} {'USED':<5} DETAIL")
    for layer, info in report.items():
        used = "yes" if info["used"] else ("no" if weak else "BLOCK")
        click.echo(f"{layer:<14} {'yes' if info['available'] else 'NO':<10} {used:<5} {info.get('detail', '')}")
    missing = [k for k, v in report.items() if not v["available"]]
    if missing:
        click.echo(f"\nplugins will not start in strict mode (HOST_SANDBOX=strict) while {', '.join(missing)} "
                   "is unavailable; HOST_SANDBOX=weak starts them with the layers that exist.")
    click.echo("")
    for line in isolation["detail"]:
        click.echo(f"origins: {line}")


def origin_report(settings: HostSettings) -> dict[str, Any]:
    """How browsers see the plugins with these settings: own origins, and whether they share one by path."""
    domain = settings.origin_domain
    lines = []
    if domain:
        lines.append(f"each plugin on its own origin: http://<name>.{domain}{origins.split_host(settings.bind)[1]}/ "
                     "(HOST_PLUGIN_DOMAIN" + ("" if settings.plugin_domain is not None else
                                              f", default for --bind {settings.bind}") + ")")
    else:
        lines.append("no plugin has an origin of its own (HOST_PLUGIN_DOMAIN is empty or --bind is not loopback)")
    if settings.path_mode:
        lines.append("path mode on: " + origins.SHARED_ORIGIN_WARNING
                     + " HOST_PATH_MODE=false turns it off.")
    return {"plugin_domain": domain or None, "path_mode": settings.path_mode, "shared_origin": settings.path_mode,
            "detail": lines}


@cli.command()
def schema() -> None:
    """Print the JSON Schema of plugin.toml."""
    click.echo(json_schema())


# -- admin tokens and the audit log (issue 11) -----------------------------------------------------------------


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@cli.group()
def token() -> None:
    """Tokens for the admin API and UI (stored hashed; a token is shown once, when it is created)."""


@token.command(name="create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["admin", "read"]), required=True,
              help="admin: every operation; read: look only.")
@click.pass_obj
def token_create(obj: Ctx, name: str, scope: str) -> None:
    """Create token NAME and print it as the last line of standard output. It cannot be shown again."""
    registry = Registry(obj.layout().registry)
    try:
        secret = registry.create_token(name, scope, who=local_who())
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    progress(f"token {name} ({scope}) created; store it now, it cannot be shown again (only its hash is kept)")
    click.echo(secret)


@token.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def token_list(obj: Ctx, as_json: bool) -> None:
    """Tokens: name, scope, created, last used (to the minute), revoked. Never a secret (none is stored)."""
    rows = [{"name": t.name, "scope": t.scope, "created": _when(t.created),
             "last_used": None if t.last_used is None else _when(t.last_used),
             "revoked": None if t.revoked is None else _when(t.revoked)}
            for t in Registry(obj.layout().registry).tokens()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no tokens (host token create NAME --scope admin|read)")
        return
    click.echo(f"{'NAME':<24} {'SCOPE':<6} {'CREATED':<21} {'LAST USED':<21} REVOKED")
    for r in rows:
        click.echo(printable(f"{r['name']:<24} {r['scope']:<6} {r['created']:<21} {r['last_used'] or '-':<21} "
                             f"{r['revoked'] or '-'}"))


@token.command(name="revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Ctx, name: str) -> None:
    """Revoke token NAME at once; its UI sessions end too."""
    if not Registry(obj.layout().registry).revoke_token(name, who=local_who()):
        raise UsageError(f"no active token {printable(name)!r} (see `host token list`)")
    progress(f"token {name} revoked")


@cli.command()
@click.option("--plugin", metavar="NAME", help="Only this plugin's events (also of one since uninstalled).")
@click.option("-n", "lines", type=click.IntRange(min=1), default=50, show_default=True, help="Events to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def audit(obj: Ctx, plugin: str | None, lines: int, as_json: bool) -> None:
    """The audit log, newest first: time, who (local:<user>, token:<name>, or the host itself), plugin, kind and
    detail. Kept HOST_AUDIT_RETENTION_DAYS days (default 90; 0 = forever)."""
    events = Registry(obj.layout().registry).events(plugin, limit=lines)
    if as_json:
        click.echo(json.dumps([{"id": e.id, "time": _when(e.ts), "who": e.who, "plugin": e.plugin, "kind": e.kind,
                                "detail": e.detail} for e in events], indent=2))
        return
    if not events:
        click.echo("no events")
        return
    click.echo(f"{'TIME':<21} {'WHO':<20} {'PLUGIN':<20} {'KIND':<18} DETAIL")
    for e in events:
        detail = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in e.detail.items())
        line = f"{_when(e.ts):<21} {e.who or 'host':<20} {e.plugin or '-':<20} {e.kind:<18} {detail}"
        click.echo(printable(line.rstrip()))


cli.add_command(apply_cli.apply)
cli.add_command(sign_cli.keygen)
cli.add_command(sign_cli.sign)
cli.add_command(apply_cli.export)
cli.add_command(users_cli.user)
cli.add_command(hooks_cli.hooks)


def _leave() -> None:
    """Exit at once, without tearing the interpreter down: freeing every module's objects (pydantic's schemas
    above all) took 0.1-0.2 s of a warm `host install`, after its work was done. Only for a command that has
    nothing left to run: its output is flushed here, the registry is committed (SQLite replays the WAL at the
    next open), its scratch directories are gone (context managers), and no thread of its own runs."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (a closed pipe): nothing more to tell it
            pass
    os._exit(0)


def main() -> None:
    try:
        if cli.main(standalone_mode=False) is DONE:
            _leave()
    except click.exceptions.Abort:
        click.echo("error: interrupted; nothing was changed", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ManifestError as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        sys.exit(2)
    except NotGranted as exc:  # one line per permission beyond the grant
        for line in exc.lines:
            click.echo(f"error: {printable(exc.plugin)}: {printable(line)}", err=True)
        sys.exit(exc.exit_code)
    except HostError as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted; nothing was changed", err=True)
        sys.exit(130)
    except PermissionError as exc:
        if os.environ.get("HOST_DEBUG"):
            raise
        click.echo(f"error: {permission_denied(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("HOST_DEBUG"):
            raise
        click.echo(f"error: unexpected {exc.__class__.__name__}: {printable(exc)} (set HOST_DEBUG=1 for a traceback)",
                   err=True)
        sys.exit(1)
