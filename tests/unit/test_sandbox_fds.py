"""The runner's last step before exec: every inherited fd above 2 becomes close-on-exec."""

from __future__ import annotations

import os

import pytest

from sandbox_runner import libc


@pytest.mark.parametrize("close_range", [True, False], ids=["close_range", "proc-fallback"])
def test_every_fd_from_first_becomes_close_on_exec(monkeypatch: pytest.MonkeyPatch, close_range: bool) -> None:
    if not close_range:
        def no_close_range(number: int, *args: object) -> int:
            raise OSError(38, "ENOSYS")

        monkeypatch.setattr(libc, "syscall", no_close_range)
    r, w = os.pipe()
    for fd in (r, w):
        os.set_inheritable(fd, True)
    low, high = min(r, w), max(r, w)
    try:
        libc.cloexec_from(high)
        assert os.get_inheritable(low) and not os.get_inheritable(high)
    finally:
        os.close(r)
        os.close(w)
