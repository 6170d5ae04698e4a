"""Validate JSON values against schemas of the official OpenAI OpenAPI spec (`../shared/specs/openapi.json`).

The spec is OpenAPI 3.1 but still carries OpenAPI 3.0's `nullable: true` (ignored by 2020-12 validators), so each
such schema is rewritten to also admit `null` (ECOSYSTEM §1.4), then the document is registered as one resource.
A failure names every violation, and for unions the branch the value's tag (`type`, `role`) selects.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError, relevance  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "specs" / "openapi.json"
_URN = "urn:openai"
_MAX_LISTED_ERRORS = 10


def validate(value: Any, schema_name: str) -> None:
    """Raise AssertionError listing every violation when `value` is not a valid `components.schemas[schema_name]`."""
    errors = sorted(_validator(schema_name).iter_errors(value), key=lambda error: list(error.absolute_path))
    if not errors:
        return
    variant = _discriminated_variant(schema_name, value)
    if variant is not None:  # a tagged union fails as "matches none of 40 variants": show the tagged one's errors
        errors = sorted(_validator(variant).iter_errors(value), key=lambda error: list(error.absolute_path)) or errors
        schema_name = f"{schema_name} ({variant})"
    listed = "\n".join(_describe(error) for error in errors[:_MAX_LISTED_ERRORS])
    more = f"\n  … and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
    raise AssertionError(f"not a valid {schema_name}: {len(errors)} error(s)\n{listed}{more}\nvalue: {value!r:.2000}")


def _describe(error: ValidationError) -> str:
    line = f"  at {error.json_path}: {error.message:.300}"
    if error.context:  # anyOf / oneOf: say why the branch the value was meant for failed
        innermost = _innermost(error)
        line += f"\n    because at {innermost.json_path}: {innermost.message:.300}"
    return line


def _innermost(error: ValidationError) -> ValidationError:
    """Descend through anyOf/oneOf failures into the tagged branch of a discriminated union, else the deepest one."""
    while error.context:
        tagged = _tagged_branches(error.schema, error.instance)
        branch_errors = [e for e in error.context if e.relative_schema_path[0] in tagged]
        error = min(branch_errors or error.context, key=relevance)
    return error


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in _spec()["components"]["schemas"]:
        raise KeyError(f"{schema_name!r} is not in the spec's components.schemas")
    return Draft202012Validator({"$ref": f"{_URN}#/components/schemas/{schema_name}"}, registry=_registry())


@functools.cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry().with_resource(_URN, DRAFT202012.create_resource(_spec()))
    return registry


@functools.cache
def _spec() -> dict[str, Any]:
    document: dict[str, Any] = _rewrite(msgspec.json.decode(SPEC_PATH.read_bytes()))
    return document


def _rewrite(node: Any) -> Any:
    """The spec as a 2020-12 validator should read it: `nullable: true` schemas become `anyOf: [schema, {type: null}]`
    (not `type: [T, "null"]`, which enums, $refs and oneOfs would still refuse), and discriminated `oneOf`s become
    `anyOf`s, because a discriminator picks the branch by tag, while some of the spec's unions have overlapping
    branches (a typed `message` input item is both an EasyInputMessage and an InputMessage)."""
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _rewrite(item) for key, item in node.items() if key != "nullable"}
    if "discriminator" in rewritten and "oneOf" in rewritten:
        rewritten["anyOf"] = rewritten.pop("oneOf")
    if node.get("nullable") is True:
        return {"anyOf": [rewritten, {"type": "null"}]}
    return rewritten


def _discriminated_variant(schema_name: str, value: Any) -> str | None:
    """The component name of the discriminated union's variant whose tag `value` carries, if just one does."""
    schema = _spec()["components"]["schemas"][schema_name]
    tagged = _tagged_branches(schema, value)
    if len(tagged) != 1:
        return None
    ref: str = schema.get("anyOf", schema.get("oneOf"))[tagged.pop()].get("$ref", "")
    return ref.rpartition("/")[2] or None


def _tagged_branches(schema: Any, value: Any) -> set[int]:
    """The indexes of a `discriminator` union's anyOf/oneOf branches whose tag enum holds `value`'s tag."""
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return set()
    tag = schema.get("discriminator", {}).get("propertyName")
    if tag is None or tag not in value:
        return set()
    branches = schema.get("anyOf") or schema.get("oneOf") or []
    return {
        index
        for index, branch in enumerate(branches)
        if value[tag] in _component(branch).get("properties", {}).get(tag, {}).get("enum", [])
    }


def _component(branch: dict[str, Any]) -> dict[str, Any]:
    name = branch.get("$ref", "").rpartition("/")[2]
    component: dict[str, Any] = _spec()["components"]["schemas"].get(name, branch)
    return component
