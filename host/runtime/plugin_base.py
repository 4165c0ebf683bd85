"""Base class for seed-style plugins: subclass it and add routes to ``self.app`` in ``register()``."""

from __future__ import annotations

from typing import Any


class PluginBase:
    def __init__(self, app: Any) -> None:
        self.app = app

    def register(self) -> None:
        """Override this method to register plugin routes."""
        raise NotImplementedError("Plugins must implement the register() method.")
