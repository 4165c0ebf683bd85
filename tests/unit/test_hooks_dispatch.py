"""The event dispatcher's decisions (host.hooks.dispatch): retry schedule with jitter, dead letter, 410, 429,
waiting plugins and uninstalled ones. No sockets: a fake poster answers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from host.hooks import outbox
from host.hooks.client import CallFailed
from host.hooks.dispatch import Dispatcher, Target, next_delay
from host.hooks.events import CloudEvent, emit
from host.registry import Registry

TARGET = Target(Path("/nonexistent.sock"), "whsec_AAAA")


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "registry.db")
    m = {"name": "seer", "version": "1.0", "entrypoint": "app:app",
         "permissions": {"host_api": ["events:subscribe:notes.*"]}, "hooks": {"events": ["notes.*"]}}
    r.put("seer", "1.0", "i1", m, True)
    return r


def pending(reg: Registry) -> dict[str, Any]:
    return dict(reg.query("SELECT * FROM hook_deliveries ORDER BY id DESC LIMIT 1")[0])


def answering(*answers: int | tuple[int, str] | Exception) -> tuple[Any, list[str]]:
    seen: list[str] = []
    queue = list(answers)

    def poster(target: Target, msg_id: str, body: bytes, timeout: float) -> tuple[int, str | None]:
        seen.append(msg_id)
        a = queue.pop(0)
        if isinstance(a, Exception):
            raise a
        return (a, None) if isinstance(a, int) else a
    return poster, seen


def test_the_schedule_has_jitter_and_an_end() -> None:
    rng = random.Random(1)
    schedule = (0.0, 5.0, 30.0, 300.0, 1800.0)
    delays = [next_delay(schedule, n, rng) for n in range(6)]
    assert delays[0] == 0.0 and delays[5] is None
    for got, base in zip(delays[1:5], schedule[1:], strict=True):
        assert got is not None and base * 0.8 <= got <= base * 1.2 and got != base


def test_failures_follow_the_schedule_then_dead_letter(reg: Registry) -> None:
    ev = CloudEvent(source="/plugins/notes", type="notes.note.created")
    emit(reg, ev)
    poster, seen = answering(500, CallFailed("cannot reach the plugin: Connection refused"), 503)
    d = Dispatcher(reg, lambda _: TARGET, schedule=(0.0, 10.0, 100.0), poster=poster, rng=random.Random(2))
    nexts = []
    for _ in range(3):
        row = pending(reg)
        d.run_now(row, TARGET)
        nexts.append(pending(reg)["next_at"] - pending(reg)["updated"])
    last = pending(reg)
    assert seen == [ev.id] * 3  # the same id every time: the plugin dedupes by it
    assert 8 <= nexts[0] <= 12 and 80 <= nexts[1] <= 120
    assert (last["state"], last["attempts"], last["last_error"]) == ("dead", 3, "HTTP 503")
    assert [(x.type, x.attempts) for x in outbox.deliveries(reg, state="dead")] == [("notes.note.created", 3)]
    audit = reg.events(kinds=["hook_dead_letter"])[0]
    assert (audit.plugin, audit.detail["event_id"]) == ("seer", ev.id)
    # the operator requeues it once the plugin is fixed
    assert outbox.requeue(reg, last["id"]) and pending(reg)["state"] == "pending"


def test_429_waits_as_long_as_asked_and_410_unsubscribes(reg: Registry) -> None:
    emit(reg, CloudEvent(source="/plugins/notes", type="notes.note.created"))
    poster, _ = answering((429, "120"), 410)
    d = Dispatcher(reg, lambda _: TARGET, schedule=(0.0, 1.0, 1.0), poster=poster)
    d.run_now(pending(reg), TARGET)
    row = pending(reg)
    assert row["state"] == "pending" and row["next_at"] - row["updated"] >= 120
    d.run_now(row, TARGET)
    assert pending(reg)["state"] == "gone"
    assert emit(reg, CloudEvent(source="/plugins/notes", type="notes.note.created")) == 0  # no longer queued
    assert emit(reg, CloudEvent(source="/plugins/notes", type="notes.note.deleted")) == 1  # other types still are
    assert reg.events(kinds=["hook_unsubscribed"])[0].detail == {"type": "notes.note.created"}


def test_a_plugin_that_is_not_serving_keeps_its_events(reg: Registry) -> None:
    emit(reg, CloudEvent(source="/plugins/notes", type="notes.note.created"))
    d = Dispatcher(reg, lambda _: "wait", poster=answering()[0])
    assert d.poll() == 0
    assert (pending(reg)["state"], pending(reg)["attempts"]) == ("pending", 0)
    Dispatcher(reg, lambda _: "gone").poll()
    assert pending(reg)["state"] == "gone"


def test_the_supervisor_resolves_live_instances_waits_for_others_and_wakes_sleepers(reg: Registry,
                                                                                   tmp_path: Path) -> None:
    import threading
    from types import SimpleNamespace

    from host.hooks.signing import SECRET_ENV
    from host.layout import Layout
    from host.settings import HostSettings
    from host.supervisor.hooks import SupervisorHooks
    from host.supervisor.state import State

    submitted: list[str] = []

    def worker(state: State, instance: Any, asleep: bool = False) -> Any:
        return SimpleNamespace(lc=SimpleNamespace(state=state), instance=instance, want_running=True, asleep=asleep,
                               submit=submitted.append)

    spec = SimpleNamespace(instance_socket=Path("/run/seer/4.sock"), env={SECRET_ENV: "whsec_x"})
    sup = SimpleNamespace(settings=HostSettings(home=tmp_path), layout=Layout(tmp_path), web_user=None,
                          registry=reg, _lock=threading.Lock(), workers={})
    hooks = SupervisorHooks(sup)  # type: ignore[arg-type]
    assert hooks.resolve("seer") == "wait"  # installed, no worker yet
    assert hooks.resolve("ghost") == "gone"  # not installed
    sup.workers["seer"] = worker(State.RUNNING, SimpleNamespace(spec=spec))
    assert hooks.resolve("seer") == Target(Path("/run/seer/4.sock"), "whsec_x")
    sup.workers["seer"] = worker(State.STOPPED, None, asleep=True)  # scaled to zero
    assert hooks.resolve("seer") == "wait" and submitted == ["wake"]


def test_the_outbox_forgets_what_is_done_but_never_what_is_pending(reg: Registry) -> None:
    for _ in range(3):
        emit(reg, CloudEvent(source="/plugins/notes", type="notes.note.created"))
    ids = [r["id"] for r in reg.query("SELECT id FROM hook_deliveries ORDER BY id")]
    with reg.transaction() as db:
        db.execute("UPDATE hook_deliveries SET state = 'delivered', updated = 0 WHERE id = ?", (ids[0],))
        db.execute("UPDATE hook_deliveries SET state = 'dead', updated = 0 WHERE id = ?", (ids[1],))
        db.execute("UPDATE hook_deliveries SET updated = 0 WHERE id = ?", (ids[2],))  # pending, however old
    assert outbox.prune(reg, dead_retention_days=0) == 1  # dead letters kept forever with retention 0
    assert outbox.prune(reg, dead_retention_days=90) == 1
    assert [r["state"] for r in reg.query("SELECT state FROM hook_deliveries")] == ["pending"]


def test_host_hooks_lists_dead_letters_and_requeues_them(reg: Registry, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from host.cli import cli

    ev = CloudEvent(source="/plugins/notes", type="notes.note.created")
    emit(reg, ev)
    poster, _ = answering(500)
    Dispatcher(reg, lambda _: TARGET, schedule=(0.0,), poster=poster).run_now(pending(reg), TARGET)
    home = str(reg.path.parent)
    out = CliRunner().invoke(cli, ["--home", home, "hooks", "--state", "dead"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["PLUGIN", "PENDING", "DELIVERED", "DEAD", "GONE"]
    assert lines[1].split() == ["seer", "0", "0", "1", "0"]
    row = lines[4].split()
    assert (row[2], row[3], row[4], row[5], row[6], row[7:]) == ("seer", "notes.note.created", "dead", "1", ev.id,
                                                                 ["HTTP", "500"])
    out = CliRunner().invoke(cli, ["--home", home, "hooks", "requeue", row[0]])
    assert (out.exit_code, out.output) == (0, f"delivery {row[0]} queued again\n")
    out = CliRunner().invoke(cli, ["--home", home, "hooks", "requeue", row[0]])
    assert str(out.exception) == f"delivery {row[0]} is not a dead letter (see `host hooks --state dead`)"
    assert getattr(out.exception, "exit_code", None) == 2  # a usage error: exit 2 from `host`


def test_an_open_circuit_reported_by_the_web_tier_is_audited_and_counted(reg: Registry, tmp_path: Path) -> None:
    import threading
    from types import SimpleNamespace

    from host.layout import Layout
    from host.settings import HostSettings
    from host.supervisor import metrics
    from host.supervisor.hooks import SupervisorHooks

    sup = SimpleNamespace(settings=HostSettings(home=tmp_path), layout=Layout(tmp_path), web_user=None,
                          registry=reg, _lock=threading.Lock(), workers={}, egress_refusals={}, tiers={},
                          started=0.0)
    sup.hooks = SupervisorHooks(sup)  # type: ignore[arg-type]
    for _ in range(2):
        assert sup.hooks.filter_tripped({"plugin": "waf", "filter": "rules", "reason": "no answer within 0.2s"})
    audit = reg.events(kinds=["filter_circuit_open"])
    expected = ("waf", {"filter": "rules", "reason": "no answer within 0.2s"})
    assert [(e.plugin, e.detail) for e in audit] == [expected] * 2
    assert metrics.snapshot(sup)["filters_tripped"] == {"waf/rules": 2}  # type: ignore[arg-type]
