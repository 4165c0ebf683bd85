"""Whether an install may go ahead: the signature policy, pinned publishers and the downgrade rule.

Publishers are pinned on first use: the first signed install of a name pins its key (unless the operator
pre-trusted keys for it, HOST_TRUSTED_KEYS). A later bundle must be signed by the pinned key, or by a key the
pinned one handed the plugin over to in a succession statement (host.signing), or the operator overrides it
(``--trust-new-key``, audited). A version below the name's high-water mark is refused unless
``--allow-downgrade`` (audited). Both marks survive uninstall. Nothing here writes: the installer commits the
pin in the same registry transaction as the install.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import Version

from host.errors import DowngradeRefused, SignatureError, UsageError
from host.registry import Registry
from host.settings import HostSettings
from host.signing import Verified, key_id, parse_public


@dataclass(frozen=True)
class Overrides:
    """What the operator explicitly allowed for this install (each one is audited)."""

    allow_downgrade: bool = False
    trust_new_key: bool = False


@dataclass
class Decision:
    pin: str | None = None  # the publisher key to pin from now on
    audit: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)  # (event kind, detail)
    notes: list[str] = field(default_factory=list)  # progress lines for the operator


def pretrusted(settings: HostSettings, name: str) -> list[str]:
    """Keys HOST_TRUSTED_KEYS lists for ``name`` (or for every name, ``*``)."""
    keys = []
    for item in settings.trusted_keys.split(","):
        plugin, sep, key = item.strip().partition("=")
        if not sep:
            continue
        if plugin.strip() in (name, "*"):
            try:
                keys.append(parse_public(key))
            except ValueError as exc:
                raise UsageError(f"HOST_TRUSTED_KEYS: {plugin.strip()}: {exc}") from exc
    return keys


def check_version(registry: Registry, name: str, version: str, overrides: Overrides) -> Decision:
    """Refuse a downgrade below the high-water mark unless allowed; cheap, so it runs before anything is built."""
    decision = Decision()
    high = registry.high_water(name)
    if high is not None and Version(version) < Version(high):
        if not overrides.allow_downgrade:
            raise DowngradeRefused(name, version, high)
        decision.audit.append(("downgrade_allowed", {"from": high, "to": version}))
        decision.notes.append(f"downgrading below {high} (--allow-downgrade; audited)")
    return decision


def check_publisher(settings: HostSettings, registry: Registry, name: str, verified: Verified | None,
                    overrides: Overrides, decision: Decision) -> None:
    """Apply HOST_SIGNATURES and the pinned publisher to a verified (or unsigned) bundle; fills ``decision``."""
    if settings.signatures == "off":
        return
    pinned = registry.publisher(name)
    trusted = [pinned] if pinned else pretrusted(settings, name)
    if verified is None:
        if settings.signatures == "require":
            raise SignatureError(name, None, "the bundle is unsigned and this host requires signatures "
                                 "(HOST_SIGNATURES=require); ask its author to sign it (`host sign`)")
        if trusted and not overrides.trust_new_key:
            raise SignatureError(name, None, f"the bundle is unsigned, but {name} is published by key "
                                 f"{_ids(trusted)}; refusing it (an admin may pass --trust-new-key; audited)")
        decision.notes.append("warning: the bundle is unsigned: nothing says who published it (risk +1)")
        return
    new = verified.key
    if not trusted:
        decision.pin = new
        decision.notes.append(f"signed by key {key_id(new)}: pinned as {name}'s publisher (trust on first use)")
        return
    if new in trusted:
        decision.pin = new if pinned is None else None
        decision.notes.append(f"signed by key {key_id(new)}, {name}'s publisher")
        return
    handed = _succession(trusted, verified)
    if handed is not None:
        decision.pin = new
        decision.audit.append(("publisher_succeeded", {"from": key_id(handed), "to": key_id(new)}))
        decision.notes.append(f"signed by key {key_id(new)}: key {key_id(handed)} handed {name} over to it")
        return
    if overrides.trust_new_key:
        decision.pin = new
        decision.audit.append(("publisher_overridden", {"from": _ids(trusted), "to": key_id(new)}))
        decision.notes.append(f"signed by key {key_id(new)}, not {name}'s publisher {_ids(trusted)}: trusted by "
                              "--trust-new-key (audited)")
        return
    raise SignatureError(name, None, f"signed by key {key_id(new)}, but {name}'s publisher is key {_ids(trusted)}; "
                         "refused (the old key can hand it over: `host sign --previous-key OLD`; an admin may pass "
                         "--trust-new-key, audited)")


def _succession(trusted: list[str], verified: Verified) -> str | None:
    """The trusted key from which the (already verified) succession statements lead to the signing key."""
    for start in trusted:
        current, seen = start, {start}
        for _ in range(len(verified.successions)):
            step = next((s for s in verified.successions if s.old_key == current), None)
            if step is None or step.new_key in seen:
                break
            current = step.new_key
            seen.add(current)
            if current == verified.key:
                return start
    return None


def _ids(keys: list[str]) -> str:
    return " or ".join(key_id(k) for k in keys)
