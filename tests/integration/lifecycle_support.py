"""Helpers for the lifecycle tests: a bounded background request loop, supervisor status, registry events,
and finding a host's processes by pid (never by name)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from host import control
from host.registry import Event, Registry
from tests.integration.harness import ServedHost, alive


class RequestLoop:
    """GET ``url`` back to back in a thread until stopped, at most ``max_requests`` times or ``max_seconds``.

    Records every outcome: a status code, or the exception's class name when no HTTP answer came.
    """

    def __init__(self, url: str, max_requests: int = 5000, max_seconds: float = 120.0) -> None:
        self.url = url
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.outcomes: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and len(self.outcomes) < self.max_requests \
                    and time.monotonic() < deadline:
                try:
                    self.outcomes.append(client.get(self.url).status_code)
                except httpx.HTTPError as exc:
                    self.outcomes.append(exc.__class__.__name__)
                time.sleep(0.005)

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(30)
        return self.outcomes

    def assert_all_ok(self, at_least: int = 10) -> None:
        counts = Counter(self.outcomes)
        assert set(counts) == {200}, f"the neighbour did not answer every request: {dict(counts)}"
        assert len(self.outcomes) >= at_least, f"only {len(self.outcomes)} requests ran"


def status(host: ServedHost) -> dict[str, Any]:
    """The supervisor's own view (control socket): plugins with pid/state/reason, and the web tier."""
    return control.call(host.home / "run" / "control.sock", "status", timeout=10)


def plugin_status(host: ServedHost, name: str) -> dict[str, Any]:
    return dict(status(host)["plugins"][name])


def root_pid(host: ServedHost, name: str) -> int:
    """The host-visible pid of the plugin instance (its sandbox runner)."""
    pid = plugin_status(host, name)["pid"]
    assert isinstance(pid, int), f"{name} has no live instance: {plugin_status(host, name)}"
    return pid


def events(home: Path, plugin: str | None, kind: str) -> list[Event]:
    return [e for e in Registry(home / "registry.db").events(plugin, limit=1000) if e.kind == kind]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(fragment: str) -> set[int]:
    """Live (non-zombie) pids whose command line contains ``fragment`` (a unique temp path or token)."""
    me = os.getpid()
    return {int(p) for p in os.listdir("/proc")
            if p.isdigit() and int(p) != me and fragment in cmdline(int(p)) and alive(int(p))}


def plugin_pids(home: Path, name: str) -> set[int]:
    """Every process of one plugin's instances: all of them carry <home>/plugins/<name>/ in their argv
    (runner, bwrap and gunicorn: the venv and bundle paths)."""
    return pids_matching(f"{home}/plugins/{name}/")


def wait_gone(pids: set[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still alive after {timeout}s: {[(p, cmdline(p)[:120]) for p in sorted(left)]}")
        time.sleep(0.05)
