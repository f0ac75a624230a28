"""Request body limits for batray's HTTP servers (`batray serve`, `batray annotate serve`).

`BodyLimit` is a pure ASGI middleware: each route (path prefix) has its own limit. A request whose
`Content-Length` already exceeds it is answered 413 before the app runs (no body read, no auth
work, no database); a body sent without a length (chunked) is counted as it streams in and refused
as soon as it passes the limit, raising `BodyTooLarge` (an `HTTPException`, so the app's own
handler words the 413 in the app's error shape). FastAPI reads a body before it runs its
dependencies, so in both cases the 413 comes before the API key or session is looked at. uvicorn
stops reading a socket while the app does not consume the body, so an unread body costs no memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, path: str):
        super().__init__(413, too_large_message(limit, path), headers={"Connection": "close"})
        self.limit = limit


def too_large_message(limit: int, path: str) -> str:
    return f"the request body is larger than {limit} bytes, the limit of {path}"


class BodyLimit:
    """`app.add_middleware(BodyLimit, limits={"/api/labels": 65536}, default=4096, error_body=fn)`.

    `limits` maps a path prefix to its limit in bytes (the longest matching prefix wins), `default`
    covers every other path; `error_body(message) -> dict` is the JSON of a 413 sent before the app runs.
    """

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int,
                 error_body: Callable[[str], dict] = lambda message: {"detail": message}):
        self.app = app
        self.limits = sorted(limits.items(), key=lambda kv: -len(kv[0]))
        self.default = default
        self.error_body = error_body

    def limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = self.limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await self._refuse(send, too_large_message(limit, path))
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, path)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send, message: str) -> None:
        body = json.dumps(self.error_body(message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
