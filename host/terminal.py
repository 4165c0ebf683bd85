"""Text from manifests, bundles and plugins made safe for the operator's terminal: the ONE defusing function.

Everything the CLI prints that a plugin could have chosen (its manifest, its bundle's file names, its output,
pip's output while building it, a quarantine reason) goes through :func:`printable` (and `host serve`'s log
lines through :class:`PrintableFormatter`), so no escape sequence, carriage return or bidirectional override
can rewrite what the operator sees, e.g. erase the lines above a consent prompt with ESC[1A ESC[2K.
"""

from __future__ import annotations

import logging
import os

# C0 controls (ESC, CR, BS, BEL ...), DEL, the C1 range (0x9b is an 8-bit CSI to many terminals) and the
# bidirectional overrides and isolates (they reorder the rest of the line on screen).
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
REPLACEMENT = "?"
_ONE_LINE = dict.fromkeys(_UNSAFE, REPLACEMENT)
_MULTI_LINE = {c: r for c, r in _ONE_LINE.items() if c not in (0x09, 0x0A)}  # keep tab and newline


def printable(text: object, *, multiline: bool = False) -> str:
    """``text`` with every terminal control character replaced by '?'. One line unless ``multiline`` (which
    keeps newlines and tabs, for logs). ``None`` is the empty string."""
    if text is None:
        return ""
    return str(text).translate(_MULTI_LINE if multiline else _ONE_LINE)


class PrintableFormatter(logging.Formatter):
    """Log lines defused for a console: a plugin's output and its reasons are logged verbatim."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), multiline=True)


def permission_denied(exc: PermissionError) -> str:
    """The one line for a PermissionError nothing else explained: the file, and what a non-root user can do."""
    hint = "" if os.geteuid() == 0 else (
        f"; this runs as uid {os.geteuid()}, not root: use a home this user owns (--home DIR), where plugins run "
        "without their own uids, cgroup limits and disk quota (`host doctor` shows what it can enforce)")
    return f"permission denied: {printable(exc.filename or exc)}{hint}"
