"""Stage 5, route: the model name a tenant called → the upstream route that serves it."""

from __future__ import annotations

from gateway.errors import InvalidRequestError, NotFoundError
from gateway.runtime import ResolvedRoute
from gateway.schema.openai import ChatRequest


def route(routes: dict[str, ResolvedRoute], request: ChatRequest) -> ResolvedRoute:
    resolved = routes.get(request.model)
    if resolved is None:
        raise NotFoundError(
            f"The model `{request.model[:100]}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
            outcome="invalid_request",
        )
    limit = request.completion_limit
    if limit is not None and limit > resolved.max_context_tokens:
        raise InvalidRequestError(
            f"`max_tokens` is at most {resolved.max_context_tokens} for model `{request.model}`.",
            param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
    return resolved
