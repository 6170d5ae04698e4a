"""Responses → chat: a CreateResponse body, and the earlier turns' items, as one chat-completions request.

The request is read through msgspec Structs of the subset chat can serve (unknown fields ignored, unknown `type`
tags refused); what has no faithful chat equivalent raises `UnsupportedFeature` naming the field, for a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import msgspec

from gateway.schema.openai import JsonObject

_LOGPROBS_INCLUDE = "message.output_text.logprobs"
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


def to_chat(request: JsonObject, history: list[JsonObject]) -> JsonObject:
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
    chat: JsonObject = {"model": parsed.model, "messages": messages}
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


def _chat_messages(instructions: str | None, items: list[tuple[str, _Item]]) -> list[JsonObject]:
    """Chat messages for `(param, item)` pairs, `param` naming the item in errors."""
    messages: list[JsonObject] = [{"role": "system", "content": instructions}] if instructions else []
    for param, item in items:
        if isinstance(item, _Message):
            messages.append(_chat_message(item, param))
        elif isinstance(item, _FunctionCall):
            _attach_tool_call(messages, item)
        elif isinstance(item, _FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _tool_content(item, param)})
        # reasoning items are dropped: a chat upstream takes no reasoning input
    return messages


def _chat_message(message: _Message, param: str) -> JsonObject:
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


def _chat_part(part: _Part, param: str) -> JsonObject:
    if isinstance(part, (_InputText, _OutputText)):
        return {"type": "text", "text": part.text}
    if isinstance(part, _Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    if isinstance(part, _InputImage):
        return _chat_image(part, param)
    return _chat_file(part, param)


def _chat_image(image: _InputImage, param: str) -> JsonObject:
    if image.image_url is None:
        raise UnsupportedFeature(f"{param}.file_id", "chat completions takes images by image_url only, not file_id")
    if image.detail not in ("auto", "low", "high"):
        raise UnsupportedFeature(f"{param}.detail", f"image detail {image.detail!r} has no chat-completions equivalent")
    return {"type": "image_url", "image_url": {"url": image.image_url, "detail": image.detail}}


def _chat_file(file: _InputFile, param: str) -> JsonObject:
    if file.file_url is not None:
        raise UnsupportedFeature(f"{param}.file_url", "files by URL are not supported; send file_id or file_data")
    fields = {"file_id": file.file_id, "file_data": file.file_data, "filename": file.filename}
    return {"type": "file", "file": {name: value for name, value in fields.items() if value is not None}}


def _attach_tool_call(messages: list[JsonObject], call: _FunctionCall) -> None:
    """Consecutive calls, and calls right after assistant text, are one assistant turn in chat."""
    tool_call = {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(tool_call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})


def _tool_content(result: _FunctionCallOutput, param: str) -> str | list[JsonObject]:
    if isinstance(result.output, str):
        return result.output
    parts = []
    for index, part in enumerate(result.output):
        if not isinstance(part, (_InputText, _OutputText)):
            message = f"{_tag(part)} is not supported in a function_call_output: chat tool results are text only"
            raise UnsupportedFeature(f"{param}.output[{index}]", message)
        parts.append(_chat_part(part, f"{param}.output[{index}]"))
    return _collapsed(parts)


def _collapsed(parts: list[JsonObject]) -> str | list[JsonObject]:
    """One text part as a plain string: the same message, in the form every chat server accepts (replayed output
    messages are always one output_text part, and not every upstream takes assistant content as a list)."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _chat_tool(tool: _FunctionTool) -> JsonObject:
    function: JsonObject = {"name": tool.name}
    for name in ("description", "parameters", "strict"):
        if getattr(tool, name) is not None:
            function[name] = getattr(tool, name)
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: _ToolChoice) -> str | JsonObject:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, _NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    tools = [{"type": "function", "function": {"name": tool.name}} for tool in choice.tools]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": tools}}


def _chat_text_options(text: _TextConfig) -> JsonObject:
    options: JsonObject = {}
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


# ---- a request's input as items ----


def input_items(request: JsonObject) -> list[JsonObject]:
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
