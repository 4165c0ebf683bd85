"""glibc malloc arenas: capped in the host's threaded processes (the supervisor, the web tiers); and the
supervisor's free heap given back to the kernel when its plugins stop (:class:`Trimmer`).

glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and an arena keeps
what it once held; the supervisor (a thread per plugin) and a gthread web worker (a pool of threads) would
otherwise each keep up to 16 of them on this 2-core machine. Two arenas cost little contention at our
allocation rates. Call before the process starts its threads; a no-op without glibc.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """True when glibc took the limit."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas) == 1)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        log.debug("mallopt unavailable; malloc arenas not capped")
        return False


def release_free_memory() -> bool:
    """glibc's malloc_trim(0): free pages inside the heaps go back to the kernel. True when some did."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0) == 1)
    except (OSError, AttributeError):  # not glibc
        return False


class Trimmer:
    """Releases free heap when fewer children are alive than at the last look: what a plugin's start, its
    monitoring and its stop allocated is freed by then, but glibc keeps free pages inside its heaps resident
    (~1.3 MiB of the idle supervisor with the bundled plugins asleep, issue 12). Costs well under a millisecond."""

    def __init__(self, trim: Callable[[], bool] = release_free_memory) -> None:
        self.trim = trim
        self.alive = 0

    def look(self, alive: int) -> bool:
        """``alive`` children now; True when that is fewer than before and memory was released."""
        fewer, self.alive = alive < self.alive, alive
        return fewer and self.trim()
