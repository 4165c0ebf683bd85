"""`host user add|list|remove`: the host's own end users (host.users)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

from host import users
from host.errors import UsageError
from host.operations import local_who
from host.registry import Registry
from host.terminal import printable

if TYPE_CHECKING:
    from host.cli import Ctx


@click.group()
def user() -> None:
    """End users who sign in on the host's login page (/_host/login); plugins see their name."""


@user.command(name="add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@click.pass_obj
def user_add(obj: Ctx, name: str, password_stdin: bool) -> None:
    """Add user NAME, or give NAME a new password (asked for twice unless --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        users.add(Registry(obj.layout(create=True).registry), name, password, who=local_who())
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    click.echo(f"==> user {printable(name)} saved (only a scrypt hash of the password is kept)", err=True)


@user.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def user_list(obj: Ctx, as_json: bool) -> None:
    """The users, by name."""
    found = users.all_users(Registry(obj.layout().registry))
    if as_json:
        click.echo(json.dumps([{"name": u.name, "created": u.created} for u in found]))
        return
    if not found:
        click.echo("no users (host user add NAME)")
    for u in found:
        click.echo(f"{printable(u.name)}\t{time.strftime('%Y-%m-%d %H:%M', time.localtime(u.created))}")


@user.command(name="remove")
@click.argument("name")
@click.pass_obj
def user_remove(obj: Ctx, name: str) -> None:
    """Remove user NAME (a session already open lasts until it expires, at most 12 hours)."""
    if not users.remove(Registry(obj.layout().registry), name, who=local_who()):
        raise UsageError(f"no user {printable(name)!r} (see `host user list`)")
    click.echo(f"==> user {printable(name)} removed", err=True)
