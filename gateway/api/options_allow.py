"""`Allow` on automatic OPTIONS answers lists every method the path serves.

litestar 2 builds a path's automatic OPTIONS handler when the first handler for that path is registered, so a
path served by several handlers (`GET` and `DELETE /v1/responses/{id}`, the admin tenant routes) advertised
only one method (litestar#4169, fixed in litestar 3). This hook rewrites the header from the finished route
table; it is a few dict lookups on OPTIONS responses only.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope


class AllowEveryMethod:
    """A `before_send` hook; it reads the route table of the app serving the request once, on first use."""

    def __init__(self) -> None:
        self._methods: dict[str, str] | None = None

    async def __call__(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        if self._methods is None:
            self._methods = _allowed_by_path(scope["app"])
        handler = scope.get("route_handler")
        for path in getattr(handler, "paths", ()):
            methods = self._methods.get(path)
            if methods is not None:
                MutableScopeHeaders.from_message(message)["allow"] = methods
                return


def _allowed_by_path(app: Litestar) -> dict[str, str]:
    return {route.path: ", ".join(sorted(route.methods)) for route in app.routes if isinstance(route, HTTPRoute)}
