"""A manifest setting's values without pydantic: types, checks and how a value reads in the environment.
manifests.settings' Setting model and manifests.view's plain view of a stored one (the supervisor's) share
:class:`SettingRules`. Must not import pydantic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

Value = bool | int | float | str
MAX_SETTINGS = 64
# Per string value; the kernel refuses an environment string over 128 KiB (MAX_ARG_STRLEN).
MAX_STRING = 16384
_INT64 = 2**63
# Variables the runtime sets or reads itself (paths, the interpreter, the dynamic loader, gunicorn, the
# socket handover, the egress proxy, who the plugin is): a setting may not replace them.
RESERVED_ENV = frozenset({
    "PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "PWD", "TERM",
    "VIRTUAL_ENV", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "GUNICORN_CMD_ARGS",
    "WEB_CONCURRENCY", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FTP_PROXY", "SCRIPT_NAME",
})
RESERVED_ENV_PREFIXES = ("LD_", "PYTHON", "LC_", "PLUGIN_", "SANDBOX_RUNNER_", "GCONV_", "GLIBC_", "MALLOC_")
# Text values: anything printable plus tab and line breaks (a PEM key), never NUL (no environment can hold it)
# nor the other control characters.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def env_name(key: str) -> str:
    """The environment variable a setting arrives in."""
    return key.upper()


def reserved(env: str) -> bool:
    return env in RESERVED_ENV or env.startswith(RESERVED_ENV_PREFIXES)


def to_env(value: Value) -> str:
    """How a value reads in the environment: JSON's spelling for booleans (``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SettingRules:
    """A setting's checks, from its ``type``, ``choices`` and ``secret``."""

    if TYPE_CHECKING:
        type: str
        secret: bool
        choices: tuple[Value, ...] | None

    def check(self, value: Any) -> Value:
        """A typed value (from JSON or TOML) → the value stored; ValueError naming what is expected."""
        typed = self._typed(value)
        if self.choices is not None and typed not in {self._typed(c) for c in self.choices}:
            shown = "" if self.secret else f"{value!r}: "
            raise ValueError(f"{shown}must be one of {', '.join(repr(c) for c in self.choices)}")
        return typed

    def parse(self, text: str) -> Value:
        """Command-line text (``key=text``) → the value stored."""
        value: Any = text
        try:
            if self.type == "integer":
                value = int(text.strip(), 10)
            elif self.type == "number":
                value = float(text.strip())
            elif self.type == "boolean":
                low = text.strip().lower()
                if low not in (*_TRUE, *_FALSE):
                    raise ValueError
                value = low in _TRUE
        except ValueError:
            raise ValueError(self._expected(text)) from None
        return self.check(value)

    def _typed(self, value: Any) -> Value:
        if self.type == "string":
            if not isinstance(value, str):
                raise ValueError(self._expected(value))
            if len(value) > MAX_STRING:
                raise ValueError(f"longer than {MAX_STRING} characters")
            if _CONTROL.search(value):
                raise ValueError("control characters other than tab and line breaks are not allowed")
            return value
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise ValueError(self._expected(value))
            return value
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
                raise ValueError(self._expected(value))
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(self._expected(value))
        return float(value)

    def _expected(self, value: Any) -> str:
        what = {"string": "text", "integer": "an integer", "number": "a number (e.g. 0.5)",
                "boolean": "true or false"}[self.type]
        # a secret's rejected value is not echoed: it may be the right secret in the wrong field
        return f"expected {what}" + ("" if self.secret else f", got {str(value)[:80]!r}")


def values_schema(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of the values object (`host config NAME --schema`, and `settings.json`'s shape)."""
    props: dict[str, Any] = {}
    for key, s in settings.items():
        prop: dict[str, Any] = {"type": s.type}
        if s.description:
            prop["description"] = s.description
        if s.default is not None:
            prop["default"] = s.default
        if s.choices is not None:
            prop["enum"] = list(s.choices)
        if s.type == "string":
            prop["maxLength"] = MAX_STRING
        if s.secret:
            prop["writeOnly"] = True
        props[key] = prop
    return {"type": "object", "properties": props, "additionalProperties": False,
            "required": [k for k, s in settings.items() if s.required]}
