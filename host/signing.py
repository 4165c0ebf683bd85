"""Signed bundles: Ed25519 keys, the bundle signature file (``plugin.sig``) and its verification.

A signature covers a per-file SHA-256 manifest of the bundle (exactly the files `host install` copies), the
plugin's name and version, and the hash of that file manifest. Verification checks the signature, every file's
hash and that no file is unlisted. A signature may carry a succession statement: the previous key, signing the
plugin's name and the new key, hands the plugin over (host.trust pins publishers).

Why ``cryptography`` (pyca) and not a minisign library: it is among the most used and best kept Python packages
(wheels for every platform, OpenSSL's audited Ed25519 underneath, security releases within days), while the
Python minisign packages are small one-maintainer projects. We need only Ed25519 sign/verify and our own
canonical JSON, so the minisign file format would buy compatibility with a tool our users do not run here.
Imports nothing from the host but its bundle copier and errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from host.bundle import BundleError, copy_bundle
from host.errors import SignatureError, UsageError
from host.integrity import sha256_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from host.registry import Provenance

# cryptography (~6 MiB resident) is imported where a key is made, loaded or checked: the supervisor imports
# this module (admin uploads install through it) and should not carry it while nobody installs anything.

SIGNATURE_FILE = "plugin.sig"
FORMAT = "plugin-host-signature-1"
_BUNDLE_DOMAIN = b"plugin-host-bundle-1\n"
_SUCCESSION_DOMAIN = b"plugin-host-succession-1\n"
_SECRET_HEADER = "plugin-host secret key (ed25519): keep this file private"
KEY_PREFIX = "ed25519:"
_HEX64 = r"^[0-9a-f]{64}$"


class Succession(BaseModel):
    """The previous publisher's key hands plugin ``name`` over to ``new_key``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    old_key: str
    new_key: str
    signature: str


class SignatureFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal["plugin-host-signature-1"]
    name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    files: dict[str, str]
    files_sha256: str = Field(pattern=_HEX64)
    key: str
    signature: str
    successions: tuple[Succession, ...] = ()


@dataclass(frozen=True)
class Verified:
    """A bundle whose signature checked out: by ``key`` (``ed25519:<base64>``); ``successions`` as signed."""

    key: str
    successions: tuple[Succession, ...]

    @property
    def key_id(self) -> str:
        return key_id(self.key)


# -- keys ---------------------------------------------------------------------------------------------------


def key_id(public: str) -> str:
    """A short, stable name for a public key (16 hex digits of its sha256), shown to operators."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def public_text(key: Ed25519PublicKey) -> str:
    return KEY_PREFIX + base64.b64encode(key.public_bytes_raw()).decode()


def generate(path: Path) -> str:
    """Write a new secret key to ``path`` (0600, never over an existing file) and its public key to
    ``path.pub``; returns the public key text."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = public_text(key.public_key())
    secret = f"{_SECRET_HEADER}\n{base64.b64encode(key.private_bytes_raw()).decode()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{path}: exists; choose another path (a key is never overwritten)") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    pub = path.with_name(path.name + ".pub")
    pub.write_text(public + "\n")
    return public


def load_secret(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        lines = path.read_text().splitlines()
        if len(lines) < 2 or lines[0] != _SECRET_HEADER:
            raise ValueError("not a plugin-host secret key (made by `host keygen`)")
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(lines[1], validate=True))
    except (OSError, ValueError, binascii.Error) as exc:
        raise UsageError(f"{path}: cannot read the secret key: {exc}") from exc


def parse_public(text: str) -> str:
    """A public key as given by an operator (``ed25519:<base64>``, or a ``.pub`` file's content), normalised."""
    text = text.strip()
    _raw_public(text)
    return text


def _raw_public(public: str) -> bytes:
    if not public.startswith(KEY_PREFIX):
        raise ValueError(f"not a public key (expected {KEY_PREFIX}<base64>)")
    try:
        raw = base64.b64decode(public.removeprefix(KEY_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not a public key: {exc}") from exc
    if len(raw) != 32:
        raise ValueError("not a public key: an Ed25519 key has 32 bytes")
    return raw


def _verify(public: str, signature: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(_raw_public(public)).verify(base64.b64decode(signature, validate=True),
                                                                       message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# -- hashing --------------------------------------------------------------------------------------------------


def bundle_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under a copied bundle ``root`` (relative POSIX paths), the signature
    file itself excluded. A copied bundle holds only regular files and directories (host.bundle)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            rel = (base / name).relative_to(root).as_posix()
            if rel != SIGNATURE_FILE:
                out[rel] = sha256_file(base / name)
    return out


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _message(name: str, version: str, files_sha256: str) -> bytes:
    return _BUNDLE_DOMAIN + _canonical({"name": name, "version": version, "files_sha256": files_sha256})


def _succession_message(name: str, new_key: str) -> bytes:
    return _SUCCESSION_DOMAIN + _canonical({"name": name, "new_key": new_key})


# -- signing (authors) ------------------------------------------------------------------------------------------


def sign_dir(source: Path, key: Ed25519PrivateKey, previous: Ed25519PrivateKey | None = None) -> SignatureFile:
    """Sign the plugin directory ``source``: write ``source/plugin.sig``. The files hashed are exactly those
    `host install` copies (the bundle copier runs into a scratch directory first), so build debris, caches and
    symlinks pointing outside never end up in the list. ``previous``: the key that signed earlier versions,
    which hands the plugin over to ``key`` (a succession statement)."""
    from manifests import ManifestError, load_manifest

    try:
        manifest = load_manifest(source)
    except ManifestError as exc:
        raise UsageError(f"{source}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="plugin-host-sign-") as tmp:
        try:
            copy_bundle(source, Path(tmp) / "bundle")
        except (BundleError, OSError) as exc:
            raise UsageError(f"{source}: {exc}") from exc
        files = bundle_hashes(Path(tmp) / "bundle")
    public = public_text(key.public_key())
    digest = hashlib.sha256(_canonical(files)).hexdigest()
    successions: tuple[Succession, ...] = ()
    if previous is not None:
        old = public_text(previous.public_key())
        stmt = base64.b64encode(previous.sign(_succession_message(manifest.name, public))).decode()
        successions = (Succession(old_key=old, new_key=public, signature=stmt),)
    sig = SignatureFile(format=FORMAT, name=manifest.name, version=manifest.version, files=files, files_sha256=digest,
                        key=public, signature=base64.b64encode(key.sign(_message(manifest.name, manifest.version,
                                                                                  digest))).decode(),
                        successions=successions)
    (source / SIGNATURE_FILE).write_text(sig.model_dump_json(indent=1) + "\n")
    return sig


# -- verifying (install) -----------------------------------------------------------------------------------------


def read(root: Path, plugin: str) -> SignatureFile | None:
    """The bundle's signature file, None when it has none."""
    path = root / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        return SignatureFile.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SignatureError(plugin, SIGNATURE_FILE, f"unreadable: {first}") from exc


def verify(root: Path, name: str, version: str) -> Verified | None:
    """Check the copied bundle ``root`` against its signature: None when unsigned; SignatureError naming the
    first file that is missing, unlisted or different, or the signature that does not verify."""
    sig = read(root, name)
    if sig is None:
        return None
    if (sig.name, sig.version) != (name, version):
        raise SignatureError(name, SIGNATURE_FILE, f"signed for {sig.name} {sig.version}, but the manifest says "
                             f"{name} {version}")
    if hashlib.sha256(_canonical(sig.files)).hexdigest() != sig.files_sha256:
        raise SignatureError(name, SIGNATURE_FILE, "its file list does not match its files_sha256")
    if not _verify(sig.key, sig.signature, _message(sig.name, sig.version, sig.files_sha256)):
        raise SignatureError(name, SIGNATURE_FILE, "the signature does not verify with its key "
                             f"({_safe_id(sig.key)}): the bundle was changed after signing, or the file is forged")
    actual = bundle_hashes(root)
    for rel in sorted(set(sig.files) | set(actual)):
        if rel not in actual:
            raise SignatureError(name, rel, "listed in the signature but missing from the bundle")
        if rel not in sig.files:
            raise SignatureError(name, rel, "not listed in the signature (added after signing)")
        if actual[rel] != sig.files[rel]:
            raise SignatureError(name, rel, "sha256 differs from the signature (changed after signing)")
    for s in sig.successions:
        if s.new_key != sig.key and not any(s.new_key == t.old_key for t in sig.successions):
            raise SignatureError(name, SIGNATURE_FILE, "a succession statement hands over to a key that does not "
                                 "sign this bundle")
        if not _verify(s.old_key, s.signature, _succession_message(name, s.new_key)):
            raise SignatureError(name, SIGNATURE_FILE, f"the succession statement from {_safe_id(s.old_key)} "
                                 "does not verify")
    return Verified(sig.key, sig.successions)


def _safe_id(public: str) -> str:
    try:
        return f"key {key_id(public)}"
    except ValueError:
        return "a malformed key"


def sign_archive(path: Path, key: Ed25519PrivateKey, previous: Ed25519PrivateKey | None = None) -> SignatureFile:
    """Sign a plugin archive (.zip, .tar.gz/.tgz, .tar): unpack it as `host install` would, sign that, and
    rewrite the archive with ``plugin.sig`` next to ``plugin.toml`` (atomically: a failure leaves it as it was)."""
    import shutil
    import tarfile
    import zipfile
    from pathlib import PurePosixPath

    from host import archive

    fmt = archive.kind(path)
    if fmt is None:
        raise UsageError(f"{path}: not a plugin directory nor {archive.FORMATS}")
    with tempfile.TemporaryDirectory(prefix="plugin-host-sign-") as tmp:
        dest = Path(tmp) / "x"
        root = archive.extract(path, dest)
        sig = sign_dir(root, key, previous)
        member = (PurePosixPath(root.relative_to(dest).as_posix()) / SIGNATURE_FILE).as_posix().removeprefix("./")
        data = (root / SIGNATURE_FILE).read_bytes()
        out = path.with_name(f".{path.name}.signing")

        def ours(name: str) -> bool:
            return PurePosixPath(name.removeprefix("./")).as_posix() == member

        try:
            if fmt == "zip":
                with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
                    for info in zin.infolist():
                        if not ours(info.filename):
                            zout.writestr(info, zin.read(info))
                    zout.writestr(member, data)
            else:
                with tarfile.open(path, "r:*") as tin, tarfile.open(out, "w:gz" if fmt == "tar.gz" else "w") as tout:
                    for m in tin:
                        if not ours(m.name):
                            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
                    entry = tarfile.TarInfo(member)
                    entry.size, entry.mode = len(data), 0o644
                    tout.addfile(entry, _bytes_io(data))
            shutil.copymode(path, out)
            os.replace(out, path)
        finally:
            out.unlink(missing_ok=True)
    return sig


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def signature_badge(prov: Provenance | None) -> dict[str, Any]:
    """What `host list` and the admin API show of an install's signature (``prov``: its registry Provenance,
    None for an install made before signatures were recorded)."""
    if prov is None:
        return {"signed": None, "key_id": None, "badge": "-"}
    if prov.signer is None:
        return {"signed": False, "key_id": None, "badge": "unsigned"}
    return {"signed": True, "key_id": key_id(prov.signer), "badge": key_id(prov.signer)}
