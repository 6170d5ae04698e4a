"""Chat chunks → Responses SSE: the typed events of a streamed Response, numbered from 0."""

from __future__ import annotations

import msgspec

from gateway.adapters.responses_over_chat.answer import Draft
from gateway.schema.openai import JsonObject

_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})
"""The spec's ResponseErrorCode values a failing chat upstream can mean (the others are about images and files)."""

_encoder = msgspec.json.Encoder()


class ResponsesStream:
    """Responses SSE frames (`event: <type>\\ndata: <json>\\n\\n`, `sequence_number` from 0) for a chat chunk stream.

    Call `start()` once, `feed(chunk)` per chat.completion.chunk payload, then `finish()` when the upstream stream
    ended, or `fail(code, message)` when it broke; `response()` is the Response as it stands (final after either)."""

    def __init__(self, request: JsonObject, response_id: str, created_at: int) -> None:
        self._request = request
        self._created_at = created_at
        self._draft = Draft(response_id)
        self._error: JsonObject | None = None
        self._sequence = 0
        self._ended = False

    def start(self) -> list[bytes]:
        created = self.response()
        return self._frames(
            [{"type": "response.created", "response": created}, {"type": "response.in_progress", "response": created}]
        )

    def feed(self, chunk: JsonObject) -> list[bytes]:
        self._check_open()
        return self._frames(self._draft.consume(chunk))

    def finish(self) -> list[bytes]:
        self._check_open()
        events = self._draft.close()
        self._ended = True
        final = self.response()
        return self._frames([*events, {"type": f"response.{final['status']}", "response": final}])

    def fail(self, code: str, message: str) -> list[bytes]:
        """`response.failed` carrying `error: {code, message}`; a code the spec does not list becomes `server_error`."""
        self._check_open()
        self._ended = True
        self._error = {"code": code if code in _ERROR_CODES else "server_error", "message": message}
        return self._frames([{"type": "response.failed", "response": self.response()}])

    def response(self) -> JsonObject:
        return self._draft.response(self._request, self._created_at, error=self._error)

    def _check_open(self) -> None:
        if self._ended:
            raise RuntimeError(f"the stream of {self._draft.response_id} has already ended")

    def _frames(self, events: list[JsonObject]) -> list[bytes]:
        frames = []
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
            frames.append(b"event: " + event["type"].encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n")
        return frames
