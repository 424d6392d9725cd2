"""Request errors: each carries the HTTP status, a short machine-readable reason and a message."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Dict, Optional


class RequestError(Exception):
    """A problem with one request: answered with ``status`` and a JSON body.

    ``reason`` is a stable identifier (used as a metric dimension and in the JSON body);
    ``message`` tells the caller what was wrong and, where possible, what to do instead.
    ``error_id``: for a failure of the server (handler/failures.py), the id also written in the
    log line that holds its traceback, so an operator can find it from the answer.
    """

    def __init__(self, status: int, reason: str, message: str, error_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.reason = reason
        self.message = message
        self.error_id = error_id

    @property
    def phrase(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def to_body(self) -> Dict[str, Any]:
        body = {"code": self.status, "type": self.phrase, "reason": self.reason, "message": self.message}
        if self.error_id is not None:
            body["error_id"] = self.error_id
        return body
