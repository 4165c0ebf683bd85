"""host.arenas.Trimmer: the supervisor gives freed heap back to the kernel when a plugin stops, not on every tick."""

from __future__ import annotations

import ctypes

import pytest

from host.arenas import Trimmer, release_free_memory


def test_heap_is_released_when_fewer_children_are_alive_and_only_then() -> None:
    calls: list[int] = []
    trimmer = Trimmer(lambda: calls.append(1) is None)
    assert [trimmer.look(n) for n in (0, 3, 5, 5, 4, 4, 0, 2)] == [False, False, False, False, True, False, True,
                                                                   False]
    assert len(calls) == 2  # a look at as many or more children costs nothing


def test_release_free_memory_gives_a_freed_block_back_on_glibc() -> None:
    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim")
    blocks = [bytearray(100_000) for _ in range(200)]  # ~20 MiB of heap (below the mmap threshold each)
    del blocks
    assert release_free_memory() is True
