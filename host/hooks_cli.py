"""`host hooks`: the event outbox as the operator sees it (deliveries per plugin and state, dead letters) and
`host hooks requeue ID` for a dead letter whose plugin was fixed."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from host.errors import UsageError
from host.hooks import outbox
from host.operations import local_who
from host.registry import Registry
from host.terminal import printable

if TYPE_CHECKING:
    from host.cli import Ctx

STATES = ("pending", "delivered", "dead", "gone")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@click.group(invoke_without_command=True)
@click.option("--plugin", metavar="NAME", help="Only deliveries to this plugin.")
@click.option("--state", type=click.Choice(STATES), help="Only deliveries in this state (dead: the dead letters).")
@click.option("-n", "lines", type=click.IntRange(min=1), default=20, show_default=True, help="Deliveries to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def hooks(ctx: click.Context, plugin: str | None, state: str | None, lines: int, as_json: bool) -> None:
    """Event deliveries: counts per plugin and state, then the newest deliveries (the event id is the dedupe
    id plugins see as webhook-id). A dead letter is an event whose every attempt failed
    (HOST_HOOK_RETRY_SCHEDULE); `host hooks requeue ID` sends it again."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    registry = Registry(obj.layout().registry)
    counts = outbox.counts(registry)
    rows = outbox.deliveries(registry, state, plugin, lines)
    if as_json:
        click.echo(json.dumps({"counts": counts, "deliveries": [r.as_dict() for r in rows]}, indent=2))
        return
    if not counts:
        click.echo("no event deliveries")
        return
    click.echo(f"{'PLUGIN':<20} " + " ".join(f"{s.upper():<10}" for s in STATES))
    for name, by_state in sorted(counts.items()):
        click.echo(printable(f"{name:<20} " + " ".join(f"{by_state.get(s, 0):<10}" for s in STATES)))
    if rows:
        click.echo("")
        click.echo(f"{'ID':<6} {'CREATED':<21} {'PLUGIN':<20} {'TYPE':<28} {'STATE':<10} {'TRIES':<5} "
                   "EVENT ID / LAST ERROR")
        for r in rows:
            click.echo(printable(f"{r.id:<6} {_when(r.created):<21} {r.plugin:<20} {r.type:<28} {r.state:<10} "
                                 f"{r.attempts:<5} {r.event_id} {r.last_error or ''}".rstrip()))


@hooks.command()
@click.argument("delivery_id", type=int)
@click.pass_obj
def requeue(obj: Ctx, delivery_id: int) -> None:
    """Send dead letter DELIVERY_ID again, with a fresh retry schedule."""
    if not outbox.requeue(Registry(obj.layout().registry), delivery_id, who=local_who()):
        raise UsageError(f"delivery {delivery_id} is not a dead letter (see `host hooks --state dead`)")
    click.echo(f"delivery {delivery_id} queued again")
