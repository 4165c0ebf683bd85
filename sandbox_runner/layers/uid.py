"""uid: drop to the plugin's own uid/gid with no supplementary groups, and prove root cannot be regained."""

from __future__ import annotations

import os

from sandbox_runner import libc
from sandbox_runner.errors import LayerFailed
from sandbox_runner.layers import Step, unavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (sandbox_runner.inner imports this)
if TYPE_CHECKING:
    from sandbox_runner.policy import Policy

_LAST_CAP = 63


def prepare(policy: Policy) -> Step:
    if os.geteuid() != 0:
        # Non-root host: we are already unprivileged (bwrap adds a user namespace); nothing to drop.
        return Step("uid", lambda: f"already unprivileged uid {os.geteuid()}")
    if policy.uid is None or policy.uid == 0:
        return unavailable("uid", "running as root and policy.uid is not a non-root uid")
    uid, gid = policy.uid, policy.gid if policy.gid is not None else policy.uid
    return Step("uid", lambda: _drop(uid, gid))


def _drop(uid: int, gid: int) -> str:
    # Empty the bounding set while we still may (CAP_SETPCAP), so nothing exec'd later can regain a
    # capability; under bwrap it is already reduced and this is refused, which is fine.
    for cap in range(_LAST_CAP + 1):
        try:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
        except OSError:
            pass
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise LayerFailed("uid", f"cannot drop to {uid}:{gid}: {exc}") from exc
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise LayerFailed("uid", f"uid/gid did not change to {uid}:{gid}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise LayerFailed("uid", "setuid(0) succeeded after the drop")
    try:
        libc.clear_capabilities()  # the uid change empties effective/permitted, not inheritable
        caps = libc.capabilities()
    except OSError as exc:
        raise LayerFailed("uid", str(exc)) from exc
    if any(caps):
        raise LayerFailed("uid", "capabilities left after the drop: eff/perm/inh=" + "/".join(map(hex, caps)))
    return f"uid={uid} gid={gid} groups=[] caps=0"
