"""Which package-index hosts pip may reach at install time: the operator's configuration, else PyPI."""

from __future__ import annotations

import configparser
import os
import shlex
from collections.abc import Iterable

PYPI = ("https://pypi.org/simple", "https://files.pythonhosted.org/")
URL_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f")
ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")
CONFIG_KEYS = ("index-url", "extra-index-url", "find-links")
CONFIG_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf")


def index_urls(pip_args: str, environ: dict[str, str] | None = None,
               config_files: Iterable[str] = CONFIG_FILES) -> list[str]:
    """Every index or find-links URL pip will use, from HOST_PIP_ARGS, PIP_* variables and the machine's
    pip configuration. PyPI is included unless an index URL replaces it (or ``--no-index``)."""
    env = os.environ if environ is None else environ
    urls: list[str] = []
    replaced = False
    args = shlex.split(pip_args)
    for i, a in enumerate(args):
        opt, eq, val = a.partition("=")
        if opt in URL_OPTIONS:
            value = val if eq else (args[i + 1] if i + 1 < len(args) else "")
            urls += value.split()
            replaced |= opt in ("--index-url", "-i")
        replaced |= a == "--no-index"
    for var in ENV:
        urls += env.get(var, "").split()
        replaced |= var == "PIP_INDEX_URL" and bool(env.get(var))
    for path in config_files:
        cp = configparser.ConfigParser()
        try:
            cp.read(path)
        except (configparser.Error, OSError):
            continue
        for section in ("global", "install"):
            for key in CONFIG_KEYS:
                value = cp.get(section, key, fallback="")
                urls += value.split()
                replaced |= key == "index-url" and bool(value)
    if not replaced:
        urls += PYPI
    return list(dict.fromkeys(urls))
