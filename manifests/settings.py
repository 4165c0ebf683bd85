"""A manifest's ``[settings]``: typed values the operator sets (`host config`) and the plugin receives at start.

Each key becomes an environment variable of the same name in upper case (``secret_key`` → ``SECRET_KEY``), so
an app that reads ``os.environ["SECRET_KEY"]`` runs unchanged; keys that would shadow the runtime's own
variables are refused here, at the manifest. Values are JSON scalars, so the whole declaration is expressible
as a JSON Schema (:func:`values_schema`). Depends on pydantic only.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

KEY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SettingKey = Annotated[str, Field(pattern=KEY_PATTERN)]
SettingType = Literal["string", "integer", "number", "boolean"]
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
# What a one-line description may not hold (as manifests.model's: terminal controls, bidi overrides).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def env_name(key: str) -> str:
    """The environment variable a setting arrives in."""
    return key.upper()


def reserved(env: str) -> bool:
    return env in RESERVED_ENV or env.startswith(RESERVED_ENV_PREFIXES)


class Setting(BaseModel):
    """One setting: its type, default, whether it must be set (``required``) and whether it is ``secret``
    (never shown again once set: `host config` prints ••••)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: SettingType = Field("string", description="string, integer, number or boolean.")
    description: str = Field("", max_length=500)
    default: StrictBool | StrictInt | StrictFloat | StrictStr | None = Field(
        None, description="Used while the operator has set no value. Not for secrets, not with required.")
    required: StrictBool = Field(False, description="The plugin does not start until this is set.")
    secret: StrictBool = Field(False, description="Never printed or logged; readable only by the plugin.")
    choices: tuple[StrictBool | StrictInt | StrictFloat | StrictStr, ...] | None = Field(
        None, min_length=1, max_length=256, description="The value must be one of these.")

    @model_validator(mode="after")
    def _consistent(self) -> Setting:
        if _UNSAFE_TEXT.search(self.description):
            raise ValueError("description: one line of text without control characters or bidirectional overrides")
        if self.choices is not None:
            if self.type == "boolean":
                raise ValueError("a boolean has its two values already: drop choices")
            checked = [self._typed(c) for c in self.choices]
            if len(set(checked)) != len(checked):
                raise ValueError("choices: each value once")
        if self.default is not None:
            if self.required:
                raise ValueError("a required setting has no default (drop one of them)")
            if self.secret:
                raise ValueError("a secret cannot have a default: the manifest is public")
            self.check(self.default)
        return self

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


def check_keys(settings: dict[str, Setting]) -> dict[str, Setting]:
    """Not too many, and none whose environment variable is the runtime's own."""
    if len(settings) > MAX_SETTINGS:
        raise ValueError(f"at most {MAX_SETTINGS} settings")
    for key in settings:
        if reserved(env_name(key)):
            raise ValueError(f"{key!r}: its environment variable {env_name(key)} is the runtime's own; "
                             "choose another key")
    return settings


def check_environment(settings: dict[str, Setting], passed_env: tuple[str, ...]) -> None:
    """A variable comes from one place: a setting, or the host's environment (permissions.environment)."""
    for key in settings:
        if env_name(key) in passed_env:
            raise ValueError(f"settings.{key}: {env_name(key)} is also in permissions.environment; "
                             "a variable comes from one place")


def to_env(value: Value) -> str:
    """How a value reads in the environment: JSON's spelling for booleans (``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def values_schema(settings: dict[str, Setting]) -> dict[str, Any]:
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
