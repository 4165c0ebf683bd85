"""A manifest's ``[settings]``: typed values the operator sets (`host config`) and the plugin receives at start.

Each key becomes an environment variable of the same name in upper case (``secret_key`` → ``SECRET_KEY``), so
an app that reads ``os.environ["SECRET_KEY"]`` runs unchanged; keys that would shadow the runtime's own
variables are refused here, at the manifest. Values are JSON scalars, so the whole declaration is expressible
as a JSON Schema (:func:`values_schema`). Depends on pydantic only.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from manifests.setting_rules import MAX_SETTINGS, SettingRules, Value, env_name, reserved, to_env, values_schema

# Values, their checks and the schema of a values object live in manifests.setting_rules (no pydantic).
__all__ = ["Setting", "SettingKey", "Value", "check_environment", "check_keys", "env_name", "to_env", "values_schema"]

KEY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SettingKey = Annotated[str, Field(pattern=KEY_PATTERN)]
SettingType = Literal["string", "integer", "number", "boolean"]
# What a one-line description may not hold (as manifests.model's: terminal controls, bidi overrides).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
class Setting(SettingRules, BaseModel):
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
