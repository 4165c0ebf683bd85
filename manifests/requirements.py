"""Which ``requirements`` entries a manifest may carry: PEP 508 names pip reads as exactly that, nothing else.

The host writes the entries into a requirements file for pip, and pip reads that file with its own line
syntax: options (``--index-url``), comments, ``${VAR}`` expansion, continuation lines, and names that look
like a file. Each entry is therefore parsed with ``packaging`` (what pip itself uses) and additionally kept
away from everything pip's line syntax would read differently.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement

EXAMPLE = "such as 'six==1.16.0'"
# pip treats a name with one of these endings as a file in its working directory (pip's ARCHIVE_EXTENSIONS).
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz",
                    ".tar.lz", ".tar.lzma")
# Inside a marker's quoted string packaging accepts anything but the quote; pip's line reader would still see
# an option after whitespace ("a --index-url=…"), a comment (" #"), ${VAR} expansion or a line continuation.
_PIP_LINE_SYNTAX = re.compile(r"\s[-#]|[$\\]")
_SHOWN = 80


def shown(text: str) -> str:
    """An entry as it appears in an error: quoted, every control or non-ASCII character escaped, one line."""
    return ascii(text) if len(text) <= _SHOWN else ascii(text[:_SHOWN]) + "..."


def check_requirement(text: str) -> Requirement:
    """Parse one ``requirements`` entry; ValueError (one line, quoting the entry) for anything but a plain
    PEP 508 requirement pip would read as that same requirement."""
    if not all(" " <= ch <= "~" for ch in text):
        # \r, \v, \f, \n end a line for pip (str.splitlines) and smuggle the rest in as a line of its own
        raise ValueError(f"{shown(text)}: only printable ASCII is allowed (no control or non-ASCII characters)")
    if text.lstrip().startswith("-"):
        raise ValueError(f"{shown(text)}: must be a PEP 508 requirement {EXAMPLE}, not a pip option")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        why = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise ValueError(f"{shown(text)}: must be a PEP 508 requirement {EXAMPLE} ({why})") from exc
    if req.url:
        raise ValueError(f"{shown(text)}: must be a PEP 508 requirement {EXAMPLE}, by name (no URLs or paths)")
    if req.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{shown(text)}: pip would read {req.name!r} as a file name (no URLs or paths)")
    if _PIP_LINE_SYNTAX.search(text):
        raise ValueError(f"{shown(text)}: may not contain '$', '\\', or '-'/'#' after a space "
                         "(pip would read an option, a variable or a comment)")
    return req
