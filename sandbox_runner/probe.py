"""What this machine can enforce, layer by layer, found by trying each mechanism (for ``host doctor``)."""

from __future__ import annotations

import os
import subprocess
import sys

from sandbox_runner import bwrap, libc
from sandbox_runner.layers import cgroup, landlock, seccomp
from sandbox_runner.policy import LAYERS, Policy

Result = dict[str, dict[str, object]]


def _r(available: bool, detail: str) -> dict[str, object]:
    return {"available": available, "detail": detail}


def probe() -> Result:
    """``{layer: {"available": bool, "detail": str}}`` for every layer in LAYERS, plus "bwrap"."""
    path, detail = bwrap.usable()
    out: Result = {"bwrap": _r(path is not None, detail)}
    out["namespaces"] = _r(path is not None, "via bwrap" if path else f"needs bwrap: {detail}")
    out["rlimits"] = _r(True, "setrlimit")
    root = os.geteuid() == 0
    out["uid"] = _r(True, "root: drops to policy.uid" if root else f"already unprivileged (uid {os.geteuid()})")
    out["no_new_privs"] = _no_new_privs()
    abi, ll = landlock.abi_version()
    out["landlock"] = _r(
        abi > 0,
        ll
        + ("" if abi >= 6 else "; no abstract-socket/signal scoping")
        + ("" if abi >= 4 or abi == 0 else "; no TCP rules"),
    )
    out["seccomp"] = _seccomp()
    out["cgroup"] = _cgroup()
    assert set(LAYERS) <= set(out)
    return out


def _no_new_privs() -> dict[str, object]:
    # In a child: the flag cannot be unset, and we must not confine the caller (the host).
    code = "import ctypes; l = ctypes.CDLL(None, use_errno=True); raise SystemExit(l.prctl(38, 1, 0, 0, 0))"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, check=False)
    return _r(proc.returncode == 0, "prctl(PR_SET_NO_NEW_PRIVS)" if proc.returncode == 0 else "refused")


def _seccomp() -> dict[str, object]:
    mod = seccomp._import()
    if isinstance(mod, str):
        return _r(False, mod)
    try:
        mode = libc.prctl(libc.PR_GET_SECCOMP)
    except OSError as exc:
        return _r(False, f"kernel without seccomp: {exc}")
    try:
        seccomp.build(mod, seccomp.rules(Policy(name="probe")))
    except OSError as exc:
        return _r(False, f"cannot build filter: {exc}")
    return _r(True, f"libseccomp via pyseccomp; this process mode={mode}")


def _cgroup() -> dict[str, object]:
    wanted = frozenset({"memory", "pids", "cpu"})
    found = cgroup.hierarchies(wanted)
    writable = [h for h in found if os.access(h.path(""), os.W_OK)]
    have = frozenset().union(*(h.controllers for h in writable))
    if not {"memory", "pids"} <= have:
        return _r(False, f"writable controllers: {', '.join(sorted(have)) or 'none'}")
    version = writable[0].version
    return _r(True, f"v{version} {', '.join(sorted(have))} under {writable[0].path('')}")
