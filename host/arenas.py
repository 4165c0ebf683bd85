"""glibc malloc arenas: capped in the host's threaded processes (the supervisor, the web tiers).

glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and an arena keeps
what it once held; the supervisor (a thread per plugin) and a gthread web worker (a pool of threads) would
otherwise each keep up to 16 of them on this 2-core machine. Two arenas cost little contention at our
allocation rates. Call before the process starts its threads; a no-op without glibc.
"""

from __future__ import annotations

import ctypes
import logging

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
