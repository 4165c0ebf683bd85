"""The runner's reading of a policy file (``Policy.to_json``'s JSON): every field checked, defaults filled in,
read through a :class:`PolicyView` with the same names and values the :class:`~sandbox_runner.policy.Policy`
dataclass has.

Why not the dataclass: dataclasses imports inspect, ast, dis, enum and typing, ~45 ms of every plugin start in
the runner stages; and the json package imports re and enum (~20 ms), so :func:`parse_json` drives the C scanner
json itself uses. Must not import dataclasses, typing, json or re (the runner stages import this module). The
defaults below are the dataclass's, and tests/unit/test_sandbox_policy_file.py holds them equal.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from sandbox_runner.policy import Policy

# Layer names, as printed by `host doctor` and used in Policy.required.
LAYERS = ("namespaces", "rlimits", "uid", "no_new_privs", "landlock", "seccomp", "cgroup")
# The only paths Policy.etc_files may cover: who the plugin is (passwd, group) and which names its network
# namespace resolves locally (hosts). Nothing else of /etc can be replaced, so a policy cannot swap the
# runtime's libraries (ld.so.cache), certificates or time zone.
ETC_FILES = ("/etc/passwd", "/etc/group", "/etc/hosts")

NETWORK_DEFAULTS: dict[str, Any] = {"enabled": False, "connect_ports": [], "netns_fd": None, "hosts_file": None}
RESOURCES_DEFAULTS: dict[str, Any] = {
    "memory_bytes": 256 * 1024 * 1024,
    "cpu_seconds": None,
    "cpu_percent": None,
    "processes": 64,
    "open_files": 1024,
    "file_size_bytes": 100 * 1024 * 1024,
}
POLICY_DEFAULTS: dict[str, Any] = {
    "ro_paths": [],
    "rw_paths": [],
    "env": {},
    "cwd": "/",
    "uid": None,
    "gid": None,
    "backend": "auto",
    "cgroup_name": None,
    "required": list(LAYERS),
    "report_path": None,
    "exit_path": None,
    "listen_fd": None,
    "etc_files": [],
    "resident": True,
    "seccomp_filter": None,
}


def check_etc_files(etc_files: tuple[tuple[str, str], ...]) -> None:
    """Raise ValueError unless every (destination, source) replaces an allowed /etc path from an absolute one."""
    dests = [dest for dest, _src in etc_files]
    for dest, src in etc_files:
        if dest not in ETC_FILES:
            raise ValueError(f"etc_files: {dest!r} cannot be replaced (only {', '.join(ETC_FILES)})")
        if not src.startswith("/"):
            raise ValueError(f"etc_files: {dest}: the source {src!r} must be an absolute path")
    if len(set(dests)) != len(dests):
        raise ValueError("etc_files: a destination is listed twice")


def complete(raw: object) -> dict[str, Any]:
    """``raw`` (a parsed policy file) checked and with every default filled in; TypeError or ValueError, as
    the dataclass's constructor would raise, for an unknown or missing field or a forbidden /etc file."""
    out = _fields("Policy", raw, {"name": None, "network": {}, "resources": {}, **POLICY_DEFAULTS})
    if "name" not in _mapping("Policy", raw):
        raise TypeError("Policy: missing field 'name'")
    out["network"] = _fields("Network", out["network"], NETWORK_DEFAULTS)
    out["resources"] = _fields("Resources", out["resources"], RESOURCES_DEFAULTS)
    check_etc_files(tuple((str(dest), str(src)) for dest, src in out["etc_files"]))
    _check_seccomp_filter(out["seccomp_filter"])
    return out


def _check_seccomp_filter(given: object) -> None:
    if given is None:
        return
    try:
        ok = isinstance(given, list) and len(given) == 2 and all(isinstance(x, str) for x in given)
        ok = ok and bool(bytes.fromhex(given[0]))  # type: ignore[index]
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("seccomp_filter: expected [hex of a BPF program, detail]")


def _mapping(what: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"{what}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _fields(what: str, raw: object, defaults: dict[str, Any]) -> dict[str, Any]:
    given = _mapping(what, raw)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{what}: unknown field {unknown[0]!r}")
    return {**defaults, **given}


def load(text: str) -> Policy:
    """A policy file's text as a checked, complete :class:`PolicyView` (typed as the Policy it mirrors)."""
    view: Policy = PolicyView(complete(parse_json(text)))  # type: ignore[assignment]
    return view


class _Strict:
    """What ``_json.make_scanner`` reads from its context (a JSONDecoder's attributes): plain JSON only."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not a JSON value")


def parse_json(text: str) -> object:
    """``json.loads(text)`` for a whole document, by the C scanner the json package itself uses (``_json``),
    without importing that package; ValueError for anything json.loads refuses (and for NaN/Infinity)."""
    try:
        import _json
    except ImportError:  # an interpreter without the accelerator: the package, whatever it costs
        import json

        return json.loads(text)
    doc = text.strip(" \t\n\r")
    try:
        # typeshed types the context as a scanner; the C code reads these six attributes from any object
        value, end = _json.make_scanner(_Strict())(doc, 0)  # type: ignore[arg-type]
    except StopIteration as exc:  # the scanner's "no value at this index"
        raise ValueError(f"not JSON: no value at character {exc.value}") from None
    if end != len(doc):
        raise ValueError(f"not JSON: extra data at character {end}")
    return value


class PolicyView:
    """Read-only attributes of a serialised :class:`~sandbox_runner.policy.Policy` (every field present, as
    :func:`complete` or ``Policy.to_json`` leaves it), the same names and values the dataclass has (lists as
    tuples). A missing field is an AttributeError."""

    __slots__ = ("raw",)
    _NESTED = frozenset({"network", "resources"})

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        try:
            value = self.raw[name]
        except KeyError:
            raise AttributeError(name) from None
        if name in self._NESTED:
            return PolicyView(value)
        if isinstance(value, list):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return value
