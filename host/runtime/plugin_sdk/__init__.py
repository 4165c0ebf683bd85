"""The plugin SDK, shipped into every plugin's venv (like ``plugin_base``); runs inside the sandbox and imports
nothing of the host. Plain HTTP keeps working without it.

- :mod:`plugin_sdk.hooks`: ``@hooks.on("notes.note.created")`` event handlers and ``@hooks.filter("name")``
  filters, with Standard Webhooks signature verification and replay protection. The host's WSGI wrapper
  serves them; nothing to register with Flask.
"""

from __future__ import annotations

__all__ = ["hooks"]
