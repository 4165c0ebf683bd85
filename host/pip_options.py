"""pip's index configuration, read on the host side and handed to the confined pip as explicit options.

pip at install time runs the build code of sdists, so nothing of the operator's pip set-up may sit where
that code can read it or change it: no ``PIP_*`` variable enters the sandbox and pip reads no config file
(``PIP_CONFIG_FILE=/dev/null``, which also ignores any pip.conf a build plants). What the operator
configured for pip machine-wide (``/etc/xdg/pip/pip.conf``, ``/etc/pip.conf``, ``$PIP_CONFIG_FILE``) and in
``PIP_*`` variables is translated here, for the settings that choose where packages come from, into
command-line options placed before ``HOST_PIP_ARGS`` (so those win, as command-line options win in pip).
Per-user pip configuration was never read by the confined pip and still is not.

Known limit: an index URL carrying credentials ends up in pip's argv, which code running as the same uid
can read from /proc; keep credentials out of index URLs (or give them to the egress point) until pip's
network access goes through a proxy that adds them.
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# pip config key -> (command-line option, how many values). Everything else in pip.conf is ignored here:
# proxy (the egress point owns the network), client-cert (a private key build code could read), and the
# options that would change what gets installed where (target, user, prefix, ...).
TRANSLATED: dict[str, tuple[str, str]] = {
    "index-url": ("--index-url", "one"),
    "extra-index-url": ("--extra-index-url", "many"),
    "find-links": ("--find-links", "many"),
    "trusted-host": ("--trusted-host", "many"),
    "no-index": ("--no-index", "flag"),
    "cert": ("--cert", "one"),
    "constraint": ("--constraint", "many"),
    "timeout": ("--timeout", "one"),
    "default-timeout": ("--timeout", "one"),
    "retries": ("--retries", "one"),
}
# Options whose value may be a local path or a file: URL: those paths are mounted read-only for pip.
PATH_OPTIONS = {"--index-url": "-i", "--extra-index-url": "", "--find-links": "-f", "--cert": "",
                "--constraint": "-c"}
_TRUE = {"y", "yes", "t", "true", "on", "1"}  # pip's strtobool
_SOURCES = {"index-url", "extra-index-url", "find-links", "trusted-host", "no-index"}
_CREDENTIALS = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def index_options(host_pip_args: str, environ: Mapping[str, str] | None = None,
                  config_files: Iterable[str] | None = None, wheelhouse: Path | None = None) -> list[str]:
    """The options the confined pip gets: the operator's pip configuration translated, then HOST_PIP_ARGS;
    with a ``wheelhouse`` (HOST_WHEELHOUSE) last ``--no-index --find-links DIR``: that directory only, offline."""
    env = os.environ if environ is None else environ
    files = machine_config_files(env) if config_files is None else list(config_files)
    values = _configured(files, env)
    args: list[str] = []
    for key, (option, kind) in TRANSLATED.items():
        value = values.get(key)
        if value is None or (wheelhouse is not None and key in _SOURCES):  # offline: the wheelhouse only
            continue
        if kind == "flag":
            if value.strip().lower() in _TRUE:
                args.append(option)
        elif kind == "many":
            args += [a for v in value.split() for a in (option, v)]
        elif value.strip():
            args += [option, value.strip()]
    offline = ["--no-index", "--find-links", str(wheelhouse.absolute())] if wheelhouse is not None else []
    return [*args, *shlex.split(host_pip_args), *offline]


def machine_config_files(environ: Mapping[str, str]) -> list[str]:
    """The files pip itself would read for the machine and the environment, in pip's order (later wins)."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    xdg = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [os.path.join(d, "pip", "pip.conf") for d in xdg.split(os.pathsep) if d]
    files.append("/etc/pip.conf")
    if environ.get("PIP_CONFIG_FILE"):
        files.append(environ["PIP_CONFIG_FILE"])
    return files


def _configured(files: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """Key -> value as pip resolves them: files merged in order, [global] then [install], then PIP_* vars."""
    import configparser  # installs only: not resident in the supervisor

    merged: dict[tuple[str, str], str] = {}
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # pip would refuse to run; here it means no index configuration from that file
        for section in parser.sections():
            for key, value in parser.items(section):
                merged[(section, _normalized(key))] = value
    values: dict[str, str] = {}
    for wanted in ("global", "install"):
        values.update({key: v for (section, key), v in merged.items() if section == wanted})
    values.update({_normalized(k[4:]): v for k, v in env.items() if k.startswith("PIP_")})
    return values


def _normalized(key: str) -> str:
    return key.lower().replace("_", "-").removeprefix("--")


def local_paths(args: list[str]) -> tuple[str, ...]:
    """Existing local directories and files that ``args`` point pip at (find-links dirs, file: indexes,
    certificate and constraint files): they must be visible, read-only, inside pip's sandbox."""
    found: list[str] = []
    for option, value in _option_values(args):
        if option not in PATH_OPTIONS:
            continue
        if value.startswith("file:"):
            from urllib.request import url2pathname

            path = url2pathname(urllib.parse.urlparse(value).path)
        elif "://" in value:
            continue
        else:
            path = value
        path = os.path.abspath(path)
        if os.path.exists(path):
            found.append(path)
    return tuple(dict.fromkeys(found))


def _option_values(args: list[str]) -> Iterable[tuple[str, str]]:
    """(long option, value) for each option of PATH_OPTIONS in ``args``, in any of pip's spellings."""
    short = {s: long for long, s in PATH_OPTIONS.items() if s}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and name in PATH_OPTIONS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            yield name, value
        elif arg[:2] in short:
            value = arg[2:]
            if not value:
                i += 1
                value = args[i] if i < len(args) else ""
            yield short[arg[:2]], value
        i += 1


def without_constraints(args: Iterable[str]) -> list[str]:
    """``args`` without --constraint/-c options: a lock pins every package with hashes, so constraints have
    nothing left to decide (and uv's --require-hashes would demand hashes of the constraints themselves)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--constraint", "-c"):
            skip = True
        elif not arg.startswith(("--constraint=", "-c")):
            out.append(arg)
    return out


def redact(argv: list[str]) -> list[str]:
    """``argv`` with the password of every ``scheme://user:password@host`` replaced, for logs."""
    return [_CREDENTIALS.sub(r"\1:****@", a) for a in argv]


# The same index options for uv (`uv pip install`), which reads no pip configuration: option -> uv option
# (same value), or -> an environment variable of uv's. An option missing here means "let pip do it".
UV_OPTIONS: dict[str, str] = {"--index-url": "--index-url", "--extra-index-url": "--extra-index-url",
                              "--find-links": "--find-links", "--constraint": "--constraint",
                              "--trusted-host": "--allow-insecure-host", "--cert": "env:SSL_CERT_FILE",
                              "--timeout": "env:UV_HTTP_TIMEOUT", "--retries": "env:UV_HTTP_RETRIES"}
UV_FLAGS = {"--no-index": "--no-index"}
_SHORT = {"-i": "--index-url", "-f": "--find-links", "-c": "--constraint"}


def uv_arguments(args: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """``args`` (what :func:`index_options` gives pip) as uv's options and environment; None when one of them
    has no uv equivalent, so the installer keeps pip rather than drop the operator's setting."""
    out: list[str] = []
    env: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg[:2] in _SHORT and not arg.startswith("--"):
            name, value, eq = _SHORT[arg[:2]], arg[2:], "=" if arg[2:] else ""
        if name in UV_FLAGS and not eq:
            out.append(UV_FLAGS[name])
            i += 1
            continue
        target = UV_OPTIONS.get(name)
        if target is None:
            return None
        if not eq:
            i += 1
            if i >= len(args):
                return None
            value = args[i]
        if target.startswith("env:"):
            env[target[4:]] = value
        else:
            out += [target, value]
        i += 1
    return out, env


@dataclass(frozen=True)
class UvCommand:
    """How to run uv for one install: its binary, the index options as uv's, and its environment."""

    binary: str
    args: tuple[str, ...]
    env: Mapping[str, str]


def uv_binary() -> str | None:
    """The uv binary of the `uv` package installed with the host (never one found on PATH)."""
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        return os.path.realpath(find_uv_bin())
    except FileNotFoundError:
        return None


def uv_command(mode: str, host_pip_args: str, wheelhouse: Path | None = None) -> UvCommand | None:
    """uv when ``mode`` (HOST_INSTALLER) allows it, its binary is there and every index option translates;
    None: use pip. Raises ValueError when ``mode`` is "uv" and uv cannot be used, saying why."""
    if mode == "pip":
        return None
    binary = uv_binary()
    translated = uv_arguments(index_options(host_pip_args, wheelhouse=wheelhouse))
    if binary is None or translated is None:
        if mode == "uv":
            why = "the uv package is not installed" if binary is None else (
                "an option of HOST_PIP_ARGS or of the machine's pip configuration has no uv equivalent")
            raise ValueError(f"HOST_INSTALLER=uv, but {why}")
        return None
    return UvCommand(binary, tuple(translated[0]), translated[1])
