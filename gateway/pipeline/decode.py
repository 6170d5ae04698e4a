"""Stage 2, decode: the request body → a validated `ChatRequest` and the JSON object to forward."""

from __future__ import annotations

import re

import msgspec

from gateway.errors import InvalidRequestError
from gateway.schema.openai import ChatRequest, JsonObject, chat_request_decoder, json_object_decoder
from gateway.settings import Limits

# Fields that would steer where or how the gateway calls upstream (SSRF, key smuggling): refused,
# never forwarded (RELIABILITY T30). Upstream hosts and keys come only from `sluice.toml`.
_ROUTING_OVERRIDES = ("api_base", "base_url", "api_key", "extra_headers", "extra_body", "api_version")
_PATH_RE = re.compile(r" - at `\$\.?(.*)`$")


def _param(message: str) -> tuple[str, str | None]:
    match = _PATH_RE.search(message)
    if match is None:
        return message, None
    return message[: match.start()], match.group(1) or None


def decode_chat(body: bytes, limits: Limits) -> tuple[ChatRequest, JsonObject]:
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        request = chat_request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = _param(str(exc))
        raise InvalidRequestError(f"Invalid request: {message}", param=param) from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidRequestError("We could not parse the JSON body of your request.") from None
    payload = json_object_decoder.decode(body)
    for field in _ROUTING_OVERRIDES:
        if field in payload:
            raise InvalidRequestError(f"`{field}` cannot be set by clients of this gateway.", param=field)
    if len(request.messages) > limits.max_messages:
        raise InvalidRequestError(f"Too many messages: at most {limits.max_messages}.", param="messages")
    if request.tools is not None and len(request.tools) > limits.max_tools:
        raise InvalidRequestError(f"Too many tools: at most {limits.max_tools}.", param="tools")
    if request.n is not None and request.n > limits.max_n:
        raise InvalidRequestError(f"`n` is at most {limits.max_n}.", param="n")
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequestError("`top_logprobs` requires `logprobs: true`.", param="top_logprobs")
    return request, payload
