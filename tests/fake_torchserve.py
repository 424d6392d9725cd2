"""A stand-in TorchServe for client tests: a stdlib HTTP server in a thread whose answers a test
scripts, recording every request it gets.

``answer(request) -> Reply`` decides each POST; GET ``/models/<name>`` answers ``describe``.
A Reply with ``lines`` is streamed as HTTP chunks, one JSON line each, like a streamed timeline.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional


@dataclass
class Request:
    path: str
    headers: Dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    lines: Optional[List[Any]] = None
    delay_s: float = 0.0
    headers: Dict[str, str] = field(default_factory=dict)  # e.g. Retry-After


def ok(predictions: Optional[List[Dict[str, Any]]] = None, **extra: Any) -> Reply:
    return Reply(200, {"predictions": predictions or [{"label": "texting", "index": 355, "probability": 0.5}], **extra})


def error(status: int, reason: str, message: str = "", torchserve: bool = False) -> Reply:
    if torchserve:  # TorchServe's own errors: {code, type, message}
        return Reply(status, {"code": status, "type": reason, "message": message})
    return Reply(status, {"code": status, "type": "Error", "reason": reason, "message": message})


@dataclass
class FakeTorchServe:
    answer: Callable[[Request], Reply]
    describe: Any = field(default_factory=lambda: [{"batchSize": 4, "workers": [{"status": "READY"}]}])
    management_token: Optional[str] = None
    requests: List[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like TorchServe

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.requests.append(request)
                reply = fake.answer(request)
                time.sleep(reply.delay_s)  # the behaviour under test: a server this slow
                if reply.lines is not None:
                    self._stream(reply)
                else:
                    self._send(reply.status, reply.body, reply.headers)

            def do_GET(self) -> None:  # noqa: N802
                if fake.management_token and self.headers.get("Authorization") != f"Bearer {fake.management_token}":
                    self._send(400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"})
                else:
                    self._send(200, fake.describe)

            def _send(self, status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in reply.lines:
                    data = (json.dumps(line) + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # Polled often: shutdown() waits up to one poll interval (0.5 s by default) at every exit.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeTorchServe":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
