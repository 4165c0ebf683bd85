"""Which package-index hosts pip may reach at install time: exactly what pip will be told to use (the same
options :func:`host.pip_options.index_options` hands the confined pip), else PyPI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from host.pip_options import index_options

PYPI = ("https://pypi.org/simple", "https://files.pythonhosted.org/")
_URL_OPTIONS = {"--index-url": True, "-i": True, "--extra-index-url": False, "--find-links": False, "-f": False}


def index_urls(pip_args: str, environ: Mapping[str, str] | None = None,
               config_files: Iterable[str] | None = None) -> list[str]:
    """Every index or find-links URL in pip's options; PyPI unless an index URL replaces it or
    ``--no-index`` turns indexes off."""
    args = index_options(pip_args, environ, config_files)
    urls: list[str] = []
    replaced = False
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        short = arg[:2] if arg[:2] in ("-i", "-f") and len(arg) > 2 else None
        if short:
            name, value, eq = short, arg[2:], "="
        if name in _URL_OPTIONS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            urls += value.split()
            replaced |= _URL_OPTIONS[name]
        replaced |= arg == "--no-index"
        i += 1
    if not replaced:
        urls += PYPI
    return list(dict.fromkeys(urls))
