"""The Responses API (`POST /v1/responses`) served by a chat-completions upstream: pure translation, no I/O.

    to_chat(request, history)      CreateResponse body (+ earlier turns' items)  → chat-completions request
    from_chat(completion, …)       chat.completion                               → Response object
    ResponsesStream                chat.completion.chunk payloads                → Responses SSE frames
    input_items / output_items     one turn's items, to prepend to the next turn's input (`previous_response_id`)

What has no faithful chat equivalent (hosted tools, background mode, conversations, stored prompts, …) raises
`UnsupportedFeature` naming the request field, for a 400; nothing is dropped silently that would change the answer.
A non-streaming answer is translated as a stream of one chunk, so both paths build the same Response by construction.

One module per direction: `request` (Responses → chat, and a request's input items), `answer` (chat → Response,
the draft both paths build, and a stored Response's items), `stream` (chat chunks → SSE frames).
"""

from __future__ import annotations

from gateway.adapters.responses_over_chat.answer import from_chat, output_items, output_text
from gateway.adapters.responses_over_chat.request import UnsupportedFeature, input_items, to_chat
from gateway.adapters.responses_over_chat.stream import ResponsesStream

__all__ = [
    "ResponsesStream",
    "UnsupportedFeature",
    "from_chat",
    "input_items",
    "output_items",
    "output_text",
    "to_chat",
]
