"""Checked reads of a JSON body's values, and the errors translation raises.

Malformed bodies raise `TranslationError`; well-formed ones asking for what the other API lacks raise
`UnsupportedFeatureError`. Both carry `param`, the JSON path of the offending field.
"""

from __future__ import annotations

from typing import Any

from gateway.schema.openai import JsonObject


class TranslationError(ValueError):
    """A request that cannot be translated; `param` is the JSON path of the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"`{param}`: {message}")
        self.param = param
        self.message = message


class UnsupportedFeatureError(TranslationError):
    """A well-formed field whose feature the other API lacks (dropping it would change the answer)."""


def as_array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(param, "must be an array")
    return value


def as_object(value: Any, param: str) -> JsonObject:
    if not isinstance(value, dict):
        raise TranslationError(param, "must be an object")
    return value


def as_string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(param, "must be a string")
    return value


def as_number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(param, "must be a number")
    return value
