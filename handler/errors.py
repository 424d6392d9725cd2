"""Request errors: each carries the HTTP status, a short machine-readable reason and a message."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Dict


class RequestError(Exception):
    """A problem with one request: answered with ``status`` and a JSON body, never a 500.

    ``reason`` is a stable identifier (used as a metric dimension and in the JSON body);
    ``message`` tells the caller what was wrong and, where possible, what to do instead.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.reason = reason
        self.message = message

    @property
    def phrase(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def to_body(self) -> Dict[str, Any]:
        return {"code": self.status, "type": self.phrase, "reason": self.reason, "message": self.message}
