"""ASGI guards in front of the app: request bodies capped before any parsing (answers by errors.TABLE)."""

from __future__ import annotations

from qkcopy.serve.errors import response_for
from qkcopy.serve.service import TooLarge


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 before any parsing."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = response_for(TooLarge(f"request body over the limit of {self.limit} bytes"))
        if declared is not None and not declared.isdigit():
            return await response_for(ValueError("Content-Length: not a number"))(scope, receive, send)
        if declared is not None and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        body, more = [], True
        size = 0
        while more:  # read (bounded) before the app parses anything, so a chunked upload is capped too
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await too_big(scope, receive, send)
        data = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
