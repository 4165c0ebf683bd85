"""The authors' `host keygen` and `host sign` commands (host.signing does the work); host.cli registers them."""

from __future__ import annotations

from pathlib import Path

import click

from host import signing
from host.terminal import printable


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Make a signing key pair: the secret key in PATH (0600; keep it private, never in the bundle) and the
    public key in PATH.pub (publish it, so operators can pre-trust it)."""
    public = signing.generate(path)
    click.echo(f"==> secret key: {path} (keep it private)", err=True)
    click.echo(f"==> public key: {path}.pub (key id {signing.key_id(public)})", err=True)
    click.echo(public)


@click.command()
@click.argument("target", type=click.Path(path_type=Path, exists=True))
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True,
              help="The secret key (made by `host keygen`).")
@click.option("--previous-key", type=click.Path(path_type=Path),
              help="The key that signed earlier versions: it hands the plugin over to --key (a succession "
                   "statement), so hosts that pinned it accept the new key.")
def sign(target: Path, key_path: Path, previous_key: Path | None) -> None:
    """Sign the plugin in TARGET (a directory, or a .zip, .tar.gz/.tgz or .tar archive of one): writes plugin.sig
    (every file's sha256, the name and version, signed) into it. Sign last: any change afterwards is refused at
    install."""
    key = signing.load_secret(key_path)
    previous = signing.load_secret(previous_key) if previous_key is not None else None
    sig = signing.sign_dir(target, key, previous) if target.is_dir() else signing.sign_archive(target, key, previous)
    handed = f"; handed over from key {signing.key_id(sig.successions[0].old_key)}" if sig.successions else ""
    click.echo(printable(f"==> signed {sig.name} {sig.version}: {len(sig.files)} files, key "
                         f"{signing.key_id(sig.key)}{handed}"), err=True)
