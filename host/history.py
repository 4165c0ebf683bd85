"""A plugin's lifecycle history for `host status NAME`: when it started, failed, was stopped and why, and how
long each instance ran, from the registry's events (so it survives restarts of the host)."""

from __future__ import annotations

import datetime
from typing import Any

from host.registry import Event, Registry
from host.terminal import printable

# The events that make a plugin's history (the audit log holds more: settings, grants, egress refusals ...).
LIFECYCLE = ("installed", "enabled", "disabled", "ready", "restarted", "restart_failed", "crashed", "worker_died",
             "recovered", "quarantined", "stopped", "scaled_to_zero", "supervisor_error")


def history(registry: Registry, name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The plugin's last ``limit`` lifecycle events, newest first."""
    rows: list[dict[str, Any]] = []
    for ev in registry.events(name, limit=max(limit * 5, 100)):
        if ev.kind in LIFECYCLE:
            rows.append(_row(ev))
            if len(rows) >= limit:
                break
    return rows


def _row(ev: Event) -> dict[str, Any]:
    d = ev.detail
    return {"time": datetime.datetime.fromtimestamp(ev.ts, datetime.UTC).isoformat(timespec="seconds"),
            "event": ev.kind, "cause": d.get("cause"), "reason": d.get("reason"), "ran_for": d.get("ran_for"),
            "returncode": d.get("returncode"), "pid": d.get("pid")}


def status(name: str, version: str, enabled: bool, live: dict[str, Any] | None, serving: bool,
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`host status --json`: the current state (from the supervisor) and the history (from the registry)."""
    live = live or {}
    state = live.get("state") or ("stopped" if serving else "not serving")
    return {"name": name, "version": version, "enabled": enabled, "state": state if enabled else "disabled",
            "pid": live.get("pid"), "up_for": live.get("up_for"), "restarts": live.get("restarts", 0),
            "failures": live.get("failures", 0), "reason": live.get("reason"), "last_exit": live.get("last_exit"),
            "history": rows}


def render(st: dict[str, Any], window: float, max_failures: int) -> list[str]:
    """`host status` for people: one line of state, the reason, then the history table."""
    facts = [f"pid {st['pid']}" if st["pid"] else None,
             f"up {_duration(st['up_for'])}" if st["up_for"] is not None else None,
             f"{st['restarts']} restart{'' if st['restarts'] == 1 else 's'}",
             f"{st['failures']} of {max_failures} failures in the last {window:g}s"]
    lines = [f"{st['name']} {st['version']}: {st['state']} ({', '.join(f for f in facts if f)})"]
    if st["reason"]:
        lines.append(f"reason: {st['reason']}")
    if not st["history"]:
        return [*lines, "no history yet"]
    lines.append("")
    lines.append(f"{'WHEN (UTC)':<20} {'EVENT':<15} {'CAUSE':<16} {'RAN':>8}  REASON")
    for row in st["history"]:
        when = row["time"].replace("T", " ")[:19]
        ran = _duration(row["ran_for"]) if row["ran_for"] is not None else "-"
        lines.append(f"{when:<20} {row['event']:<15} {row['cause'] or '-':<16} {ran:>8}  {row['reason'] or ''}")
    return [printable(line) for line in lines]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
