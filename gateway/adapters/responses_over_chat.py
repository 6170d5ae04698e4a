"""The Responses API (`POST /v1/responses`) served by a chat-completions upstream: pure translation, no I/O.

    to_chat(request, history)      CreateResponse body (+ earlier turns' items)  → chat-completions request
    from_chat(completion, …)       chat.completion                               → Response object
    ResponsesStream                chat.completion.chunk payloads                → Responses SSE frames
    input_items / output_items     one turn's items, to prepend to the next turn's input (`previous_response_id`)

What has no faithful chat equivalent (hosted tools, background mode, conversations, stored prompts, …) raises
`UnsupportedFeature` naming the request field, for a 400; nothing is dropped silently that would change the answer.
A non-streaming answer is translated as a stream of one chunk, so both paths build the same Response by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "ResponsesStream",
    "UnsupportedFeature",
    "from_chat",
    "input_items",
    "output_items",
    "output_text",
    "to_chat",
]

JSON: TypeAlias = dict[str, Any]
ItemStatus: TypeAlias = Literal["in_progress", "completed", "incomplete"]

_LOGPROBS_INCLUDE = "message.output_text.logprobs"
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})
"""The spec's ResponseErrorCode values a failing chat upstream can mean (the others are about images and files)."""
_SHARED_FIELDS = (  # same name and meaning in both APIs: copied as they are
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
)
_REFUSED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("background", lambda value: value is True, "background mode is not supported by this gateway"),
    ("conversation", lambda value: value is not None, "conversations are not supported; use previous_response_id"),
    ("prompt", lambda value: value is not None, "stored prompt templates are not supported; send the input itself"),
    ("truncation", lambda value: value == "auto", "truncation 'auto' is not supported; only 'disabled' is"),
    ("context_management", bool, "server-side context management is not supported"),
    ("moderation", lambda value: value is not None, "moderated responses are not supported by this gateway"),
)

_encoder = msgspec.json.Encoder()


class UnsupportedFeature(ValueError):  # noqa: N818 — the name the endpoint's 400 handling is written against
    """A request this adapter cannot translate faithfully: a feature chat completions has no equivalent for, or a
    shape it cannot read. `param` names the field the way OpenAI errors do (`tools[2].type`, `input[0].content`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# ---- the request subset we read, decoded by msgspec (unknown fields ignored, unknown `type` tags refused) ----


class _Typed(msgspec.Struct, tag_field="type"):
    pass


class _InputText(_Typed, tag="input_text"):
    text: str


class _OutputText(_Typed, tag="output_text"):
    text: str


class _Refusal(_Typed, tag="refusal"):
    refusal: str


class _InputImage(_Typed, tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str = "auto"


class _InputFile(_Typed, tag="input_file"):
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None
    file_url: str | None = None


_Part: TypeAlias = _InputText | _OutputText | _Refusal | _InputImage | _InputFile


class _Message(_Typed, tag="message"):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Part]


class _FunctionCall(_Typed, tag="function_call"):
    call_id: str
    name: str
    arguments: str


class _FunctionCallOutput(_Typed, tag="function_call_output"):
    call_id: str
    output: str | list[_Part]


class _Reasoning(_Typed, tag="reasoning"):
    pass


_Item: TypeAlias = _Message | _FunctionCall | _FunctionCallOutput | _Reasoning


class _FunctionTool(_Typed, tag="function"):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _NamedFunction(_Typed, tag="function"):
    name: str


class _AllowedTools(_Typed, tag="allowed_tools"):
    mode: Literal["auto", "required"]
    tools: list[_NamedFunction]


_ToolChoice: TypeAlias = Literal["none", "auto", "required"] | _NamedFunction | _AllowedTools


class _FormatText(_Typed, tag="text"):
    pass


class _FormatJsonObject(_Typed, tag="json_object"):
    pass


class _FormatJsonSchema(_Typed, tag="json_schema"):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class _TextConfig(msgspec.Struct):
    format: _FormatText | _FormatJsonObject | _FormatJsonSchema | None = None
    verbosity: str | None = None


class _ReasoningConfig(msgspec.Struct):
    effort: str | None = None  # `summary` has no chat equivalent; the API promises none anyway ("auto" may give none)


class _Request(msgspec.Struct, kw_only=True):
    model: str
    input: list[_Item] = []
    instructions: str | None = None
    tools: list[_FunctionTool] | None = None
    tool_choice: _ToolChoice | None = None
    text: _TextConfig | None = None
    reasoning: _ReasoningConfig | None = None
    max_output_tokens: int | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    stream: bool | None = None


def _decode(value: Any, target: type[Any], param_root: str) -> Any:
    """`value` as `target`, or UnsupportedFeature naming the field msgspec's error points at (`$.input[0].type`)."""
    try:
        return msgspec.convert(value, target)
    except msgspec.ValidationError as exc:
        message, located, path = str(exc).partition(" - at `$")
        param = f"{param_root}{path.rstrip('`')}".lstrip(".") if located else param_root
        if message.startswith("Invalid value") and param.endswith("type"):  # a tagged union without that variant
            message = f"{message.removeprefix('Invalid value ')} is not supported over chat completions"
        raise UnsupportedFeature(param, message) from exc


# ---- request: Responses → chat ----


def to_chat(request: JSON, history: list[JSON]) -> JSON:
    """The chat-completions request for a Responses `request`, its input preceded by the earlier turns' `history`.

    Only this request's `instructions` apply (they are never inherited through `previous_response_id`); a stream
    always asks for usage, which `response.completed` must carry."""
    for name, refused, message in _REFUSED:
        if refused(request.get(name)):
            raise UnsupportedFeature(name, message)
    parsed: _Request = _decode({**request, "input": input_items(request)}, _Request, "")
    earlier: list[_Item] = _decode([_typed(item) for item in history], list[_Item], "previous_response_id")
    located = [("previous_response_id", item) for item in earlier]
    located += [(f"input[{index}]", item) for index, item in enumerate(parsed.input)]
    messages = _chat_messages(parsed.instructions, located)
    if not messages:
        raise UnsupportedFeature("input", "the request has no input and no instructions")
    chat: JSON = {"model": parsed.model, "messages": messages}
    chat.update({name: request[name] for name in _SHARED_FIELDS if request.get(name) is not None})
    if parsed.tools:
        chat["tools"] = [_chat_tool(tool) for tool in parsed.tools]
    if parsed.tool_choice is not None:
        chat["tool_choice"] = _chat_tool_choice(parsed.tool_choice)
    if parsed.text is not None:
        chat.update(_chat_text_options(parsed.text))
    if parsed.reasoning is not None and parsed.reasoning.effort is not None:
        chat["reasoning_effort"] = parsed.reasoning.effort
    if parsed.max_output_tokens is not None:
        chat["max_completion_tokens"] = parsed.max_output_tokens
    if _LOGPROBS_INCLUDE in (parsed.include or ()):  # Responses returns logprobs only when included
        chat["logprobs"] = True
        if parsed.top_logprobs is not None:
            chat["top_logprobs"] = parsed.top_logprobs
    chat["stream"] = bool(parsed.stream)
    if parsed.stream:
        chat["stream_options"] = {"include_usage": True}
    return chat


def _chat_messages(instructions: str | None, items: list[tuple[str, _Item]]) -> list[JSON]:
    """Chat messages for `(param, item)` pairs, `param` naming the item in errors."""
    messages: list[JSON] = [{"role": "system", "content": instructions}] if instructions else []
    for param, item in items:
        if isinstance(item, _Message):
            messages.append(_chat_message(item, param))
        elif isinstance(item, _FunctionCall):
            _attach_tool_call(messages, item)
        elif isinstance(item, _FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _tool_content(item, param)})
        # reasoning items are dropped: a chat upstream takes no reasoning input
    return messages


def _chat_message(message: _Message, param: str) -> JSON:
    if isinstance(message.content, str):
        return {"role": message.role, "content": message.content}
    parts = []
    for index, part in enumerate(message.content):
        if not isinstance(part, _ROLE_PARTS[message.role]):
            message_text = f"{_tag(part)} is not supported in a {message.role} message over chat completions"
            raise UnsupportedFeature(f"{param}.content[{index}]", message_text)
        parts.append(_chat_part(part, f"{param}.content[{index}]"))
    return {"role": message.role, "content": _collapsed(parts)}


_ROLE_PARTS: dict[str, tuple[type[_Typed], ...]] = {  # what chat accepts per role
    "user": (_InputText, _OutputText, _InputImage, _InputFile),
    "assistant": (_InputText, _OutputText, _Refusal),
    "system": (_InputText, _OutputText),
    "developer": (_InputText, _OutputText),
}


def _chat_part(part: _Part, param: str) -> JSON:
    if isinstance(part, (_InputText, _OutputText)):
        return {"type": "text", "text": part.text}
    if isinstance(part, _Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    if isinstance(part, _InputImage):
        return _chat_image(part, param)
    return _chat_file(part, param)


def _chat_image(image: _InputImage, param: str) -> JSON:
    if image.image_url is None:
        raise UnsupportedFeature(f"{param}.file_id", "chat completions takes images by image_url only, not file_id")
    if image.detail not in ("auto", "low", "high"):
        raise UnsupportedFeature(f"{param}.detail", f"image detail {image.detail!r} has no chat-completions equivalent")
    return {"type": "image_url", "image_url": {"url": image.image_url, "detail": image.detail}}


def _chat_file(file: _InputFile, param: str) -> JSON:
    if file.file_url is not None:
        raise UnsupportedFeature(f"{param}.file_url", "files by URL are not supported; send file_id or file_data")
    fields = {"file_id": file.file_id, "file_data": file.file_data, "filename": file.filename}
    return {"type": "file", "file": {name: value for name, value in fields.items() if value is not None}}


def _attach_tool_call(messages: list[JSON], call: _FunctionCall) -> None:
    """Consecutive calls, and calls right after assistant text, are one assistant turn in chat."""
    tool_call = {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(tool_call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})


def _tool_content(result: _FunctionCallOutput, param: str) -> str | list[JSON]:
    if isinstance(result.output, str):
        return result.output
    parts = []
    for index, part in enumerate(result.output):
        if not isinstance(part, (_InputText, _OutputText)):
            message = f"{_tag(part)} is not supported in a function_call_output: chat tool results are text only"
            raise UnsupportedFeature(f"{param}.output[{index}]", message)
        parts.append(_chat_part(part, f"{param}.output[{index}]"))
    return _collapsed(parts)


def _collapsed(parts: list[JSON]) -> str | list[JSON]:
    """One text part as a plain string: the same message, in the form every chat server accepts (replayed output
    messages are always one output_text part, and not every upstream takes assistant content as a list)."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _chat_tool(tool: _FunctionTool) -> JSON:
    function: JSON = {"name": tool.name}
    for name in ("description", "parameters", "strict"):
        if getattr(tool, name) is not None:
            function[name] = getattr(tool, name)
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: _ToolChoice) -> str | JSON:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, _NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    tools = [{"type": "function", "function": {"name": tool.name}} for tool in choice.tools]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": tools}}


def _chat_text_options(text: _TextConfig) -> JSON:
    options: JSON = {}
    if isinstance(text.format, _FormatJsonSchema):
        schema = {name: value for name, value in msgspec.structs.asdict(text.format).items() if value is not None}
        options["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text.format, _FormatJsonObject):
        options["response_format"] = {"type": "json_object"}
    if text.verbosity is not None:
        options["verbosity"] = text.verbosity
    return options


def _tag(part: _Typed) -> str:
    return str(part.__struct_config__.tag)


# ---- items carried from turn to turn ----


def input_items(request: JSON) -> list[JSON]:
    """The request's input as a list of items (a string input is one user message; typeless messages get a type)."""
    given = request.get("input")
    if given is None:
        return []
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    if not isinstance(given, list):
        raise UnsupportedFeature("input", f"input must be a string or a list of items, not {type(given).__name__}")
    return [_typed(item) for item in given]


def _typed(item: Any) -> Any:
    if isinstance(item, dict) and item.get("type") is None:
        return {**item, "type": "message" if "role" in item else "item_reference"}
    return item


def output_items(response: JSON) -> list[JSON]:
    """The response's output as input items for the next turn: its assistant message and its function calls."""
    return [dict(item) for item in response.get("output") or [] if item.get("type") in ("message", "function_call")]


def output_text(response: JSON) -> str:
    """All output_text of the response's messages, joined (the SDKs' `response.output_text`)."""
    return "".join(
        part["text"]
        for item in response.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


# ---- answer: chat → Responses ----


def from_chat(completion: JSON, *, request: JSON, response_id: str, created_at: int) -> JSON:
    """The Response object for a chat.completion answering `request` (translated as a one-chunk stream)."""
    draft = _Draft(response_id)
    draft.consume(_as_chunk(completion))
    draft.close()
    return draft.response(request, created_at)


def _as_chunk(completion: JSON) -> JSON:
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
    logprobs: list[JSON] = field(default_factory=list)  # chat token logprobs

    def part(self) -> JSON:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": "".join(self.pieces)}
        logprobs = [_output_logprob(token) for token in self.logprobs]
        return {"type": "output_text", "text": "".join(self.pieces), "annotations": [], "logprobs": logprobs}


@dataclass
class _MessageDraft:
    output_index: int
    id: str
    parts: list[_PartDraft] = field(default_factory=list)

    def item(self, status: ItemStatus) -> JSON:
        content = [part.part() for part in self.parts] if status != "in_progress" else []
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}

    def done_events(self, status: ItemStatus) -> list[JSON]:
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

    def item(self, status: ItemStatus) -> JSON:
        arguments = "".join(self.pieces) if status != "in_progress" else ""
        fields = {"id": self.id, "type": "function_call", "status": status, "arguments": arguments}
        return {**fields, "call_id": self.call_id, "name": self.name}

    def done_events(self, status: ItemStatus) -> list[JSON]:
        where = {"item_id": self.id, "output_index": self.output_index}
        arguments = {"type": "response.function_call_arguments.done", **where, "name": self.name}
        return [
            {**arguments, "arguments": "".join(self.pieces)},
            {"type": "response.output_item.done", "output_index": self.output_index, "item": self.item(status)},
        ]


class _Draft:
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
        self.usage: JSON | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None

    def consume(self, chunk: JSON) -> list[JSON]:
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        self.service_tier = chunk.get("service_tier") or self.service_tier
        events: list[JSON] = []
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

    def close(self) -> list[JSON]:
        """The closing events of every item, in output order; an answer with no output gets an empty message."""
        events = [] if self._items else self._open_part("output_text")
        self._closed = True
        statuses = self._statuses()
        for item, status in zip(self._items, statuses, strict=True):
            events += item.done_events(status)
        return events

    def response(self, request: JSON, created_at: int, *, error: JSON | None = None) -> JSON:
        status = "failed" if error is not None else self._status()
        incomplete = _INCOMPLETE_REASONS.get(self.finish_reason or "") if status == "incomplete" else None
        output = [item.item(item_status) for item, item_status in zip(self._items, self._statuses(error), strict=True)]
        response: JSON = {
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

    def _statuses(self, error: JSON | None = None) -> list[ItemStatus]:
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

    def _text(self, kind: Literal["output_text", "refusal"], delta: str, logprobs: list[JSON] | None) -> list[JSON]:
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

    def _open_part(self, kind: Literal["output_text", "refusal"]) -> list[JSON]:
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

    def _tool_call(self, fragment: JSON) -> list[JSON]:
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
    def _added(item: _MessageDraft | _CallDraft) -> JSON:
        return {
            "type": "response.output_item.added",
            "output_index": item.output_index,
            "item": item.item("in_progress"),
        }


def _request_echo(request: JSON) -> JSON:
    """The request's settings as a Response reports them (the spec requires most of them, null when unset)."""
    text_format = (request.get("text") or {}).get("format") or {"type": "text"}
    text: JSON = {"format": text_format}
    if (request.get("text") or {}).get("verbosity") is not None:
        text["verbosity"] = request["text"]["verbosity"]
    echo: JSON = {
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


def _responses_tool(tool: JSON) -> JSON:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _usage(usage: JSON) -> JSON:
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


def _output_logprob(token: JSON) -> JSON:
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


def _event_logprob(token: JSON) -> JSON:
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in token.get("top_logprobs") or []]
    return {"token": token["token"], "logprob": token["logprob"], "top_logprobs": top}


# ---- stream: chat chunks → Responses SSE ----


class ResponsesStream:
    """Responses SSE frames (`event: <type>\\ndata: <json>\\n\\n`, `sequence_number` from 0) for a chat chunk stream.

    Call `start()` once, `feed(chunk)` per chat.completion.chunk payload, then `finish()` when the upstream stream
    ended, or `fail(code, message)` when it broke; `response()` is the Response as it stands (final after either)."""

    def __init__(self, request: JSON, response_id: str, created_at: int) -> None:
        self._request = request
        self._created_at = created_at
        self._draft = _Draft(response_id)
        self._error: JSON | None = None
        self._sequence = 0
        self._ended = False

    def start(self) -> list[bytes]:
        created = self.response()
        return self._frames(
            [{"type": "response.created", "response": created}, {"type": "response.in_progress", "response": created}]
        )

    def feed(self, chunk: JSON) -> list[bytes]:
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

    def response(self) -> JSON:
        return self._draft.response(self._request, self._created_at, error=self._error)

    def _check_open(self) -> None:
        if self._ended:
            raise RuntimeError(f"the stream of {self._draft.response_id} has already ended")

    def _frames(self, events: list[JSON]) -> list[bytes]:
        frames = []
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
            frames.append(b"event: " + event["type"].encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n")
        return frames
