"""JSON text for the inner stage's layer report, without the json module (whose re and enum imports cost every
plugin start ~20 ms). Dicts with string keys, lists, tuples, strings, bools, ints and None; ASCII output, the
way ``json.dumps`` writes it by default."""

from __future__ import annotations

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def dumps(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            items.append(f"{_string(key)}: {dumps(v)}")
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable here")


def _string(s: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (c if " " <= c < "\x7f" else _unicode(c)) for c in s) + '"'


def _unicode(c: str) -> str:
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # a surrogate pair, as JSON (UTF-16) spells characters beyond the BMP
    return f"\\u{0xD800 | n >> 10:04x}\\u{0xDC00 | n & 0x3FF:04x}"
