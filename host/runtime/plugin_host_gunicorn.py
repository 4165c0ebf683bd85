"""gunicorn settings the host gives every plugin (``gunicorn -c <install>/plugin_host_gunicorn.py``).

Runs in the plugin's gunicorn master, inside its sandbox; imports nothing of the host. ``child_exit``
tells the host each time a worker dies (gunicorn replaces it at once, so the host would never see it):
one line on stderr, written with a single write() and led by a newline, so output a worker leaves
unterminated cannot swallow it. The host's log pump recognises REPORT anywhere in a line.

The plugin can print such a line itself: that reports a death that did not happen, which only counts
against it. Nothing on this channel can make a plugin look healthier than it is.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

REPORT = "[plugin-host:worker-exit]"


def _status(pid: int) -> int | None:
    """The dead worker's wait status, from gunicorn's reap loop that called us (it does not pass it on)."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        status = frame.f_locals.get("status")
        if isinstance(status, int) and frame.f_locals.get("wpid") == pid:
            return os.waitstatus_to_exitcode(status)
        frame = frame.f_back
    return None


def child_exit(server: Any, worker: Any) -> None:
    if not getattr(server, "LISTENERS", True):
        return  # the master is shutting down and stops its workers: the host sees the instance end instead
    try:
        status = _status(worker.pid)
    except Exception:  # another gunicorn: report the death without its status
        status = None
    os.write(2, f"\n{REPORT} pid={worker.pid} status={status}\n".encode())
