"""A bound on a REST request's body, before the model server reads it.

kserve's REST server (FastAPI) reads a whole body into memory, then decodes its JSON, before any
model sees it; TorchServe's ``max_request_size`` only applies once the proxy forwards it. Without
this, one huge (or endless chunked) POST to the pod's port fills the model server's memory. The
limit is TorchServe's own (the forwarded JSON is the same bytes), so nothing TorchServe would take
is refused here: 413 from the Content-Length before a byte is read, or as soon as a chunked body
passes it. (gRPC has its own bound: ``grpc_max_receive_message_length``, server.py.)
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict

import orjson

from deploy.kserve.proxy import error_body

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: HTTP requests whose body is over ``max_bytes`` get 413 ``request_too_large``."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_large = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_large = False  # the server itself answers a malformed length
        if too_large:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(error_body(
            413, "request_too_large",
            f"the request body is over {self.max_bytes} bytes, the largest this server takes "
            "(TorchServe's max_request_size)",
        ))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
