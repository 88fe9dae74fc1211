"""The base of every config section: a pydantic model that refuses unknown keys, plus :class:`ConfigError`.

A section is a typed, range-checked pydantic v2 model (``Field(ge=1)``, ``Literal[...]``); cross-field rules are
``model_validator(mode="after")`` methods that raise :class:`ConfigError` naming the key and the fix. pydantic's
errors are turned into one :class:`ConfigError` whose message names the dotted key (``model.depth=0 is invalid:
...``) and, for a typo, the closest valid key or value (:func:`config_error`).

This module imports nothing heavy (no torch), so a command line can be checked in well under a second.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from siamim.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key or value is invalid; the message names it and the fix."""


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, numbers pass as strings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class that holds the field at ``loc`` (``None`` when ``loc`` leaves the sections)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(choices)}"


def config_error(err: ValidationError, model: type[BaseModel]) -> ConfigError:
    """pydantic's first error as a :class:`ConfigError` naming the dotted key (its location in ``model``).

    An unknown key gets the closest valid key of its section, a bad choice the closest valid choice; a
    :class:`ConfigError` raised by a validator is returned as it is.
    """
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    loc = tuple(str(p) for p in first["loc"] if not isinstance(p, int))
    key = ".".join(loc)
    value = first.get("input")
    kind = first["type"]
    if kind == "extra_forbidden":
        section = _section_at(model, loc)
        valid = sorted(section.model_fields) if section is not None else []
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f"; did you mean '{parent}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return ConfigError(f"unknown config key {key!r}{hint}")
    if kind == "literal_error":
        expected = [c.strip(" '\"") for c in first["ctx"]["expected"].replace(" or ", ", ").split(",")]
        return ConfigError(f"{key}={value!r} is not one of {expected}{_did_you_mean(str(value), expected)}")
    if kind in ("model_type", "model_attributes_type", "dict_type") and isinstance(value, (str, int, float)):
        return ConfigError(f"{key} is a section; set its keys, e.g. {key}.<key>=...")
    if kind == "missing" and isinstance(first["loc"][-1], int):
        return ConfigError(f"{key}={value!r} is invalid: no value at position {first['loc'][-1]}")
    if kind in _TYPE_NEEDS:
        return ConfigError(f"{key}={value!r} must be {_TYPE_NEEDS[kind]}")
    ctx = first.get("ctx") or {}
    if kind in _BOUNDS:
        sign, limit = _BOUNDS[kind]
        return ConfigError(f"{key}={value!r} is invalid: must be {sign} {ctx[limit]}")
    return ConfigError(f"{key}={value!r} is invalid: {first['msg']}")


_TYPE_NEEDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "too_short": "a list of the right length",
    "too_long": "a list of the right length",
}
_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def validated(model: type[BaseModel], data: Any) -> Any:
    """``model.model_validate(data)``, with a pydantic error raised as :func:`config_error`'s ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise config_error(err, model) from None
