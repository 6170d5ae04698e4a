"""Stage 2, decode: the request body → a validated `ChatRequest` and the JSON object to forward.

Besides the schema, the forwarded JSON obeys the input limits of RELIABILITY §5: no NaN or Infinity
(msgspec refuses the literals), no number beyond a double's range, no integer beyond ±2^53, nesting at
most 64 deep, valid UTF-8 without lone surrogates (msgspec refuses both). Counted limits (messages,
tools, `n`) are checked on the typed request before the body is decoded a second time.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.errors import InvalidRequestError
from gateway.schema.openai import ChatRequest, JsonObject, chat_request_decoder, json_object_decoder
from gateway.settings import Limits

# Fields that would steer where or how the gateway calls upstream (SSRF, key smuggling): refused,
# never forwarded (RELIABILITY T30). Upstream hosts and keys come only from `sluice.toml`.
_ROUTING_OVERRIDES = ("api_base", "base_url", "api_key", "extra_headers", "extra_body", "api_version")
_PATH_RE = re.compile(r" - at `\$\.?(.*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `(.*)`$")
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted; the body object itself is level 1."""
MAX_JSON_INT = 2**53
"""Largest integer magnitude accepted: beyond it, JSON parsers in other languages lose precision."""


def _param(message: str) -> tuple[str, str | None]:
    """msgspec's message without its `- at $.path` suffix, and the path as OpenAI's `param`."""
    match = _PATH_RE.search(message)
    path = None
    if match is not None:
        message, path = message[: match.start()], match.group(1) or None
    missing = _MISSING_RE.match(message)
    if missing is not None:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return message, path


def _check_value(field: str, value: Any) -> None:
    """Refuse integers beyond ±2^53 and nesting beyond `MAX_JSON_DEPTH` in one top-level field's value."""
    stack: list[tuple[Any, int]] = [(value, 2)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is int:
            if not -MAX_JSON_INT <= item <= MAX_JSON_INT:
                raise InvalidRequestError(f"`{field}` holds an integer beyond ±2^53.", param=field)
        elif kind is dict or kind is list:
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequestError(f"`{field}` is nested more than {MAX_JSON_DEPTH} levels deep.", param=field)
            children = item.values() if kind is dict else item
            stack.extend((child, depth + 1) for child in children if type(child) in (int, dict, list))


def _check_request(request: ChatRequest, limits: Limits) -> None:
    """The counted limits and the rules across fields, on the typed request."""
    if len(request.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(request.messages)}, at most {limits.max_messages}.", param="messages"
        )
    if request.tools is not None and len(request.tools) > limits.max_tools:
        raise InvalidRequestError(f"Too many tools: {len(request.tools)}, at most {limits.max_tools}.", param="tools")
    if request.n is not None and request.n > limits.max_n:
        raise InvalidRequestError(f"`n` is at most {limits.max_n}; got {request.n}.", param="n")
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequestError("`top_logprobs` requires `logprobs: true`.", param="top_logprobs")


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = _param(str(exc))
        if param is not None and "[...]" in param:
            param = None  # the forwarded object is untyped: msgspec names no field there, so neither do we
        raise InvalidRequestError(f"Invalid request: {message}", param=param) from None
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidRequestError("We could not parse the JSON body of your request.") from None


def decode_object(body: bytes) -> JsonObject:
    """Any endpoint's body as a JSON object, under the same input limits as chat: parse errors, deep nesting,
    huge integers, invalid UTF-8 and routing-override fields are 400s, never exceptions further in."""
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    payload: JsonObject = _decode(json_object_decoder, body)
    for field in _ROUTING_OVERRIDES:
        if field in payload:
            raise InvalidRequestError(f"`{field}` cannot be set by clients of this gateway.", param=field)
    for field, value in payload.items():
        _check_value(field, value)
    return payload


def decode_typed(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """`body` through a typed decoder, failures as 400s naming the field."""
    return _decode(decoder, body)


def decode_chat(body: bytes, limits: Limits) -> tuple[ChatRequest, JsonObject]:
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    request: ChatRequest = _decode(chat_request_decoder, body)
    _check_request(request, limits)
    return request, decode_object(body)


def prompt_text(request: ChatRequest) -> str:
    """The prompt's text, for a tenant whose compliance setting allows logging it."""
    parts: list[str] = []
    for message in request.messages:
        if isinstance(message.content, str):
            parts.append(f"{message.role}: {message.content}")
        elif message.content is not None:
            parts.append(f"{message.role}: " + " ".join(part.text for part in message.content if part.text))
    return "\n".join(parts)
