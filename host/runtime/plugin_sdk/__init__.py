"""The plugin SDK, shipped into every plugin's venv (like ``plugin_base``); runs inside the sandbox and imports
nothing of the host (stdlib only). Plain HTTP keeps working without it.

- :mod:`plugin_sdk.hooks`: ``@hooks.on("notes.note.created")`` event handlers and ``@hooks.filter("name")``
  filters, with Standard Webhooks signature verification and replay protection. The host's WSGI wrapper
  serves them; nothing to register with Flask.
- :mod:`plugin_sdk.api`: the host-API client (KV store, events, settings) over the plugin's own socket.
- :mod:`plugin_sdk.user`: the current user, from the host's headers, and verification of its signed assertion.
"""

from __future__ import annotations

__all__ = ["api", "hooks", "user"]
