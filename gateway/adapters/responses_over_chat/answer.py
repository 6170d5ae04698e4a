"""Chat → Responses: a chat answer as a Response object, built by the draft that streams build too.

`from_chat` translates a `chat.completion` as a stream of one chunk; `Draft` is the answer as it arrives, the
Responses events each arrival amounts to and the Response as it stands; `output_items` and `output_text` read a
stored Response back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from gateway.schema.openai import JsonObject

ItemStatus: TypeAlias = Literal["in_progress", "completed", "incomplete"]

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def output_items(response: JsonObject) -> list[JsonObject]:
    """The response's output as input items for the next turn: its assistant message and its function calls."""
    return [dict(item) for item in response.get("output") or [] if item.get("type") in ("message", "function_call")]


def output_text(response: JsonObject) -> str:
    """All output_text of the response's messages, joined (the SDKs' `response.output_text`)."""
    return "".join(
        part["text"]
        for item in response.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def from_chat(completion: JsonObject, *, request: JsonObject, response_id: str, created_at: int) -> JsonObject:
    """The Response object for a chat.completion answering `request` (translated as a one-chunk stream)."""
    draft = Draft(response_id)
    draft.consume(_as_chunk(completion))
    draft.close()
    return draft.response(request, created_at)


def _as_chunk(completion: JsonObject) -> JsonObject:
    choices = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        calls = [{"index": index, **call} for index, call in enumerate(message.get("tool_calls") or [])]
        delta = {"content": message.get("content"), "refusal": message.get("refusal"), "tool_calls": calls}
        choices.append({**choice, "delta": delta})
    return {**completion, "choices": choices}


@dataclass
class _PartDraft:
    kind: Literal["output_text", "refusal"]
    pieces: list[str] = field(default_factory=list)
    logprobs: list[JsonObject] = field(default_factory=list)  # chat token logprobs

    def part(self) -> JsonObject:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": "".join(self.pieces)}
        logprobs = [_output_logprob(token) for token in self.logprobs]
        return {"type": "output_text", "text": "".join(self.pieces), "annotations": [], "logprobs": logprobs}


@dataclass
class _MessageDraft:
    output_index: int
    id: str
    parts: list[_PartDraft] = field(default_factory=list)

    def item(self, status: ItemStatus) -> JsonObject:
        content = [part.part() for part in self.parts] if status != "in_progress" else []
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}

    def done_events(self, status: ItemStatus) -> list[JsonObject]:
        events = []
        for content_index, part in enumerate(self.parts):
            where = {"item_id": self.id, "output_index": self.output_index, "content_index": content_index}
            final = part.part()
            if part.kind == "output_text":
                logprobs = [_event_logprob(token) for token in part.logprobs]
                events.append(
                    {"type": "response.output_text.done", **where, "text": final["text"], "logprobs": logprobs}
                )
            else:
                events.append({"type": "response.refusal.done", **where, "refusal": final["refusal"]})
            events.append({"type": "response.content_part.done", **where, "part": final})
        events.append(
            {"type": "response.output_item.done", "output_index": self.output_index, "item": self.item(status)}
        )
        return events


@dataclass
class _CallDraft:
    output_index: int
    id: str
    call_id: str
    name: str
    pieces: list[str] = field(default_factory=list)

    def item(self, status: ItemStatus) -> JsonObject:
        arguments = "".join(self.pieces) if status != "in_progress" else ""
        fields = {"id": self.id, "type": "function_call", "status": status, "arguments": arguments}
        return {**fields, "call_id": self.call_id, "name": self.name}

    def done_events(self, status: ItemStatus) -> list[JsonObject]:
        where = {"item_id": self.id, "output_index": self.output_index}
        arguments = {"type": "response.function_call_arguments.done", **where, "name": self.name}
        return [
            {**arguments, "arguments": "".join(self.pieces)},
            {"type": "response.output_item.done", "output_index": self.output_index, "item": self.item(status)},
        ]


class Draft:
    """The answer as it arrives: one output item for the assistant message, one per tool call, in arrival order.

    `consume` and `close` return the Responses events (dicts without sequence numbers) the arrivals amount to."""

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self._ids = response_id.removeprefix("resp_")  # item ids derive from it, so a replay gives the same ids
        self._items: list[_MessageDraft | _CallDraft] = []
        self._message: _MessageDraft | None = None
        self._calls: dict[int, _CallDraft] = {}  # by the chat tool call index
        self._closed = False
        self.model: str | None = None
        self.usage: JsonObject | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None

    def consume(self, chunk: JsonObject) -> list[JsonObject]:
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        self.service_tier = chunk.get("service_tier") or self.service_tier
        events: list[JsonObject] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:  # to_chat never asks for n > 1
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text("output_text", delta["content"], (choice.get("logprobs") or {}).get("content"))
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events += self._text("refusal", delta["refusal"], None)
            for fragment in delta.get("tool_calls") or []:
                events += self._tool_call(fragment)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def close(self) -> list[JsonObject]:
        """The closing events of every item, in output order; an answer with no output gets an empty message."""
        events = [] if self._items else self._open_part("output_text")
        self._closed = True
        statuses = self._statuses()
        for item, status in zip(self._items, statuses, strict=True):
            events += item.done_events(status)
        return events

    def response(self, request: JsonObject, created_at: int, *, error: JsonObject | None = None) -> JsonObject:
        status = "failed" if error is not None else self._status()
        incomplete = _INCOMPLETE_REASONS.get(self.finish_reason or "") if status == "incomplete" else None
        output = [item.item(item_status) for item, item_status in zip(self._items, self._statuses(error), strict=True)]
        response: JsonObject = {
            "id": self.response_id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model or request.get("model"),
            "output": output,
            **_request_echo(request),
        }
        if self.service_tier is not None:
            response["service_tier"] = self.service_tier
        if self.usage is not None:
            response["usage"] = _usage(self.usage)
        return response

    def _status(self) -> Literal["in_progress", "completed", "incomplete"]:
        if not self._closed:
            return "in_progress"
        return "incomplete" if self.finish_reason in _INCOMPLETE_REASONS else "completed"

    def _statuses(self, error: JsonObject | None = None) -> list[ItemStatus]:
        """Open items are in progress; when the answer was cut short, the item it was cut in is incomplete."""
        if error is not None:
            return ["incomplete"] * len(self._items)
        status = self._status()
        if status == "in_progress":
            return ["in_progress"] * len(self._items)
        statuses: list[ItemStatus] = ["completed"] * len(self._items)
        if status == "incomplete" and statuses:
            statuses[-1] = "incomplete"
        return statuses

    def _text(
        self, kind: Literal["output_text", "refusal"], delta: str, logprobs: list[JsonObject] | None
    ) -> list[JsonObject]:
        events = self._open_part(kind)
        assert self._message is not None
        content_index, part = next((i, p) for i, p in enumerate(self._message.parts) if p.kind == kind)
        part.pieces.append(delta)
        where = {
            "item_id": self._message.id,
            "output_index": self._message.output_index,
            "content_index": content_index,
        }
        if kind == "refusal":
            return [*events, {"type": "response.refusal.delta", **where, "delta": delta}]
        part.logprobs += logprobs or []
        event_logprobs = [_event_logprob(token) for token in logprobs or []]
        return [*events, {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": event_logprobs}]

    def _open_part(self, kind: Literal["output_text", "refusal"]) -> list[JsonObject]:
        """Opens the message item and its `kind` content part unless they are open already."""
        events = []
        if self._message is None:
            self._message = _MessageDraft(len(self._items), f"msg_{self._ids}_{len(self._items)}")
            self._items.append(self._message)
            events.append(self._added(self._message))
        message = self._message
        if all(part.kind != kind for part in message.parts):
            message.parts.append(_PartDraft(kind))
            where = {"item_id": message.id, "output_index": message.output_index}
            part = message.parts[-1].part()
            events.append(
                {"type": "response.content_part.added", **where, "content_index": len(message.parts) - 1, "part": part}
            )
        return events

    def _tool_call(self, fragment: JsonObject) -> list[JsonObject]:
        events = []
        function = fragment.get("function") or {}
        slot = fragment.get("index", 0)
        call = self._calls.get(slot)
        if call is None:
            index = len(self._items)
            call_id = fragment.get("id") or f"call_{self._ids}_{index}"
            call = _CallDraft(index, f"fc_{self._ids}_{index}", call_id, function.get("name") or "")
            self._calls[slot] = call
            self._items.append(call)
            events.append(self._added(call))
        call.name = call.name or function.get("name") or ""  # some upstreams repeat the name in every fragment
        if function.get("arguments"):
            call.pieces.append(function["arguments"])
            where = {"item_id": call.id, "output_index": call.output_index}
            events.append({"type": "response.function_call_arguments.delta", **where, "delta": function["arguments"]})
        return events

    @staticmethod
    def _added(item: _MessageDraft | _CallDraft) -> JsonObject:
        return {
            "type": "response.output_item.added",
            "output_index": item.output_index,
            "item": item.item("in_progress"),
        }


def _request_echo(request: JsonObject) -> JsonObject:
    """The request's settings as a Response reports them (the spec requires most of them, null when unset)."""
    text_format = (request.get("text") or {}).get("format") or {"type": "text"}
    text: JsonObject = {"format": text_format}
    if (request.get("text") or {}).get("verbosity") is not None:
        text["verbosity"] = request["text"]["verbosity"]
    echo: JsonObject = {
        "background": bool(request.get("background")),
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning"),
        "store": request.get("store") is not False,
        "temperature": request.get("temperature"),
        "text": text,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": [_responses_tool(tool) for tool in request.get("tools") or []],
        "top_logprobs": request.get("top_logprobs"),
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "metadata": request.get("metadata") or {},
    }
    echo.update(
        {name: request[name] for name in ("user", "safety_identifier", "prompt_cache_key") if request.get(name)}
    )
    return echo


def _responses_tool(tool: JsonObject) -> JsonObject:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _usage(usage: JsonObject) -> JsonObject:
    input_tokens = usage.get("prompt_tokens") or 0
    output_tokens = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},  # chat usage does not report writes
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or input_tokens + output_tokens,
    }


def _output_logprob(token: JsonObject) -> JsonObject:
    top = [
        {"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes") or []}
        for t in token.get("top_logprobs") or []
    ]
    return {
        "token": token["token"],
        "logprob": token["logprob"],
        "bytes": token.get("bytes") or [],
        "top_logprobs": top,
    }


def _event_logprob(token: JsonObject) -> JsonObject:
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in token.get("top_logprobs") or []]
    return {"token": token["token"], "logprob": token["logprob"], "top_logprobs": top}
