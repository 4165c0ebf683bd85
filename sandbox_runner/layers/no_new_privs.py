"""no_new_privs: exec can never gain privileges (setuid bits, file capabilities); Landlock requires it."""

from __future__ import annotations

from sandbox_runner import libc
from sandbox_runner.errors import LayerFailed
from sandbox_runner.layers import Step


def prepare() -> Step:
    return Step("no_new_privs", _apply)


def _apply() -> str:
    try:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        if libc.prctl(libc.PR_GET_NO_NEW_PRIVS) != 1:
            raise LayerFailed("no_new_privs", "flag did not stick")
    except OSError as exc:
        raise LayerFailed("no_new_privs", str(exc)) from exc
    return "set"
