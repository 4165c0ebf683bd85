"""The `host apply FILE` and `host export` commands (host.declarative does the work); host.cli registers them."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import click

from host import config_file, declarative
from host.operations import local_who
from host.registry import Registry
from host.terminal import printable

if TYPE_CHECKING:
    from host.cli import Ctx


def _progress(msg: str) -> None:
    click.echo(f"==> {printable(msg)}", err=True)


@click.command(name="apply")
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="Print the changes it would make; make none.")
@click.option("--prune", is_flag=True, help="Also uninstall the plugins the file does not list.")
@click.pass_obj
def apply(obj: Ctx, file: Path, dry_run: bool, prune: bool) -> None:
    """Make the installed plugins match FILE (TOML, or JSON; '-' reads standard input).

    FILE lists plugins as [[plugin]] tables: name, source (a plugin directory or archive, relative to FILE),
    enabled, settings = {...} and grant = {...} (the permissions you grant, shaped like a manifest's
    [permissions]). The whole file is checked first: any problem (one line each) exits 2 and changes nothing,
    and so does a plugin asking for more than its grant. Then it installs or upgrades what differs (version or
    content), enables, disables and sets settings, printing one line per change, or "no changes". Plugins not
    in FILE are left alone unless --prune. Settings not in FILE keep their values."""
    settings = obj.settings()
    layout = obj.layout(create=not dry_run)
    registry = Registry(layout.registry)
    with ExitStack() as stack:
        wanted, problems = declarative.load(file, registry, layout, stack)
        if problems:
            for line in problems:
                click.echo(f"error: {printable(line)}", err=True)
            click.echo(f"error: {file}: {len(problems)} problem{'s' if len(problems) > 1 else ''}; "
                       "nothing was changed", err=True)
            sys.exit(2)
        changes = declarative.plan(wanted, declarative.current(settings, registry), prune=prune)
        if not changes:
            click.echo("no changes")
            return
        if dry_run:
            for ch in changes:
                click.echo(printable(ch.line))
            _progress("dry run: nothing was changed")
            return
        declarative.execute(settings, registry, wanted, changes, local_who(), _progress,
                            lambda line: click.echo(printable(line)))


@click.command(name="export")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.pass_obj
def export(obj: Ctx, as_json: bool) -> None:
    """Write the installed plugins as a `host apply` file: source, enabled, settings and the grant each was
    installed with. Secret settings are left out (listed in secrets_omitted); apply keeps them as they are."""
    settings = obj.settings()
    registry = Registry(obj.layout().registry)
    entries, notes = declarative.export(settings, registry)
    click.echo(config_file.to_json(entries) if as_json else config_file.to_toml(entries, notes), nl=False)
