"""Anthropic's Messages API served by the chat-completions pipeline: a `/v1/messages` body in, its answer out.

`to_chat` turns a Messages request into a chat-completions request; `from_chat` turns the pipeline's
`chat.completion` into an Anthropic `message`; `MessagesStream` turns a chat stream's chunk payloads into
Anthropic SSE frames; `error_body` gives an HTTP error in Anthropic's shape.

One module per direction, each documenting its mapping: `request` (Messages → chat: which fields are mapped,
dropped or refused), `answer` (chat → Messages: content, stop reasons, usage, errors), `stream` (chat chunks →
Anthropic SSE); `checks` holds the value checks and their errors, which `chat_over_anthropic` shares.
"""

from __future__ import annotations

from gateway.adapters.messages_over_chat.answer import error_body, from_chat, tool_input, tool_use_id
from gateway.adapters.messages_over_chat.checks import TranslationError, UnsupportedFeatureError
from gateway.adapters.messages_over_chat.request import to_chat
from gateway.adapters.messages_over_chat.stream import MessagesStream

__all__ = [
    "MessagesStream",
    "TranslationError",
    "UnsupportedFeatureError",
    "error_body",
    "from_chat",
    "to_chat",
    "tool_input",
    "tool_use_id",
]
