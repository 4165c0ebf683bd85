"""The confinement layers, one module each; :mod:`sandbox_runner.inner` applies them in a fixed order.

Each layer module exposes ``prepare(...) -> Step``: all look-ups (libraries, ABI, paths) happen in
``prepare`` so that applying a layer never needs something an earlier layer has already taken away.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: see sandbox_runner.inner
if TYPE_CHECKING:
    from collections.abc import Callable


class Step:
    """A prepared layer: ``run`` applies it and returns what it did; ``run is None`` means unavailable.
    A plain class, not a NamedTuple: typing (and the collections it loads) costs the inner stage ~14 ms."""

    __slots__ = ("detail", "layer", "run")

    def __init__(self, layer: str, run: Callable[[], str] | None, detail: str = "") -> None:
        self.layer = layer
        self.run = run
        self.detail = detail

    def __repr__(self) -> str:
        return f"Step({self.layer!r}, {self.run!r}, {self.detail!r})"


def unavailable(layer: str, why: str) -> Step:
    return Step(layer, None, why)
