"""OpenAI wire shapes the gateway reads or writes; codecs are built once at import.

Requests are decoded twice on purpose: into `ChatRequest` (only what the gateway needs, validated)
and into a plain JSON object that is forwarded upstream with unknown fields intact.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

import msgspec

JsonObject: TypeAlias = dict[str, Any]
"""A client's JSON body, forwarded with fields the gateway does not know left untouched."""

Role = Literal["developer", "system", "user", "assistant", "tool", "function"]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class FunctionCallView(msgspec.Struct, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallView(msgspec.Struct, kw_only=True):
    id: str | None = None
    type: str | None = None
    function: FunctionCallView | None = None


class Message(msgspec.Struct, kw_only=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: ShortText | None = None
    tool_calls: list[ToolCallView] | None = None
    tool_call_id: str | None = None


class FunctionDef(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: str
    function: FunctionDef | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """The fields of `CreateChatCompletionRequest` the gateway acts on."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    tools: list[Tool] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    seed: int | None = None
    user: ShortText | None = None

    @property
    def is_stream(self) -> bool:
        return bool(self.stream)

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int | None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class ChoiceMessageView(msgspec.Struct, kw_only=True):
    content: str | None = None


class ChoiceView(msgspec.Struct, kw_only=True):
    message: ChoiceMessageView | None = None


class CompletionView(msgspec.Struct, kw_only=True):
    """What the gateway reads from an upstream's non-streaming answer; the bytes pass through as they are."""

    object: str | None = None
    model: str | None = None
    choices: list[ChoiceView] | None = None
    usage: Usage | None = None


class DeltaView(msgspec.Struct, kw_only=True):
    content: str | None = None
    tool_calls: list[ToolCallView] | None = None


class ChunkChoiceView(msgspec.Struct, kw_only=True):
    delta: DeltaView | None = None


class ChunkView(msgspec.Struct, kw_only=True):
    """What the gateway reads from one upstream stream chunk."""

    choices: list[ChunkChoiceView] | None = None
    usage: Usage | None = None
    error: msgspec.Raw | None = None


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]


chat_request_decoder = msgspec.json.Decoder(ChatRequest)
json_object_decoder = msgspec.json.Decoder(JsonObject)
completion_view_decoder = msgspec.json.Decoder(CompletionView)
chunk_view_decoder = msgspec.json.Decoder(ChunkView)
encoder = msgspec.json.Encoder()
