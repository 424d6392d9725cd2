"""HTTP to the model: kept-alive sessions, retries with backoff on what is safe to resend, and
each outcome as an Answer or a Failure with its reason.

Timelines go to the model's long-work registration (``Endpoint.timeline_url``; a server without
one answers 404 and the request goes to the model itself).

Resent (classification is idempotent): no connection or no answer in time (a batch lost while a
worker was scaled down), 503 (queue full, no worker, the model failed on a batch), 507 and any 5xx
saying "Worker died" / "Worker scaled down" (the worker went away mid-request). Never a 4xx: the
request itself is wrong and will be answered the same way again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import requests
from requests.adapters import HTTPAdapter

from client.endpoint import ClientError, Endpoint

RETRYABLE_STATUS = (503, 507)
RETRYABLE_MESSAGES = ("Worker died", "Worker scaled down")
TOKEN_HINT = (
    "token refused: pass --token or set $SLOWFAST_TOKEN to the inference key; keys change on every start and "
    "expire after token_expiration_min, 60 min by default -- see docs/operations.md"
)


@dataclass
class Answer:
    body: Dict[str, Any]
    attempts: int


@dataclass
class Failure:
    """Why an input got no answer: ``reason`` is the server's (``no_video_stream``,
    ``InvalidKeyException``, ...) or the client's (``connection_error``, ``timeout``, ``bad_answer``)."""

    reason: str
    message: str
    status: Optional[int] = None
    attempts: int = 1
    retryable: bool = False

    def describe(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{where}: {self.reason}: {self.message}"


Outcome = Union[Answer, Failure]


def _body(reply: requests.Response) -> Any:
    try:
        return reply.json()
    except ValueError:
        return None


def failure_from_reply(reply: requests.Response, attempts: int) -> Failure:
    """A non-2xx reply in the server's own words: the handler's {reason, message} or TorchServe's
    {code, type, message}."""
    body = _body(reply)
    if isinstance(body, dict):
        reason = str(body.get("reason") or body.get("type") or f"http_{reply.status_code}")
        message = str(body.get("message") or json.dumps(body))[:500]
    else:
        reason, message = f"http_{reply.status_code}", (reply.text.strip()[:500] or reply.reason or "")
    if reply.status_code == 400 and "InvalidKey" in reply.text:
        message += f" ({TOKEN_HINT})"
    retryable = reply.status_code in RETRYABLE_STATUS or (
        reply.status_code >= 500 and any(m in reply.text for m in RETRYABLE_MESSAGES))
    return Failure(reason, message, reply.status_code, attempts, retryable)


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt ``attempt + 1``: base x 2^(attempt-1), at most ``cap``, with
    jitter in [50%, 100%] so clients that failed together do not come back together."""
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + 0.5 * rng())


@dataclass
class Transport:
    """Sends videos to ``endpoint``; one kept-alive session per thread (safe to share across threads).

    ``attempts``: tries per input (>= 1). ``on_retry(failure, delay)`` is told before each resend.
    """

    endpoint: Endpoint
    timeout: float = 400.0
    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    on_retry: Optional[Callable[[Failure, float], None]] = None
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _no_timeline_registration: bool = field(default=False, repr=False)

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            self._local.session = session
        return session

    def headers(self, fields: Mapping[str, str]) -> Dict[str, str]:
        headers = {"Content-Type": "application/octet-stream", **fields}
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return headers

    def url_for(self, fields: Mapping[str, str]) -> str:
        """Where a request with these fields goes: timelines to the long-work registration."""
        timeline = str(fields.get("timeline", "")).strip().lower() in ("true", "1", "yes", "on")
        if timeline and self.endpoint.timeline_url and not self._no_timeline_registration:
            return self.endpoint.timeline_url
        return self.endpoint.url

    def _post(self, data: bytes, fields: Mapping[str, str], attempt: int, stream: bool):
        """One POST: the reply, or a Failure when no HTTP answer came."""
        url = self.url_for(fields)
        try:
            reply = self.session().post(url, data=data, headers=self.headers(fields), timeout=self.timeout,
                                        stream=stream)
            if reply.status_code == 404 and url != self.endpoint.url and "ModelNotFound" in reply.text:
                # A server without the long-work registration: the model itself takes timelines.
                reply.close()
                self._no_timeline_registration = True
                return self._post(data, fields, attempt, stream)
            return reply
        except requests.Timeout:
            return Failure("timeout", f"no answer from {url} within {self.timeout:g} s (--timeout)",
                           None, attempt, retryable=True)
        except requests.RequestException as exc:
            self._local.session = None  # a broken keep-alive connection: start afresh
            return Failure("connection_error", f"cannot reach {url}: {exc.__class__.__name__}: {exc}",
                           None, attempt, retryable=True)

    def _with_retries(self, data: bytes, fields: Mapping[str, str], stream: bool):
        """The first 2xx reply, or the last Failure once it is not retryable or attempts are spent."""
        attempts = max(self.attempts, 1)
        for attempt in range(1, attempts + 1):
            reply = self._post(data, fields, attempt, stream)
            if isinstance(reply, requests.Response):
                if reply.ok:
                    return reply, attempt
                failure = failure_from_reply(reply, attempt)
                reply.close()
            else:
                failure = reply
            if not failure.retryable or attempt == attempts:
                return failure, attempt
            delay = backoff_delay(attempt, self.backoff, self.max_backoff)
            if self.on_retry:
                self.on_retry(failure, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def send(self, data: bytes, fields: Mapping[str, str]) -> Outcome:
        """POST one video; the JSON answer, or why there is none."""
        reply, attempts = self._with_retries(data, fields, stream=False)
        if isinstance(reply, Failure):
            return reply
        body = _body(reply)
        if not isinstance(body, dict):
            return Failure("bad_answer", f"HTTP {reply.status_code} with non-JSON: {reply.text[:200]!r}",
                           reply.status_code, attempts)
        return Answer(body, attempts)

    def stream(self, data: bytes, fields: Mapping[str, str]) -> Iterator[Dict[str, Any]]:
        """POST one video asking for a streamed answer; yield each JSON line as it arrives.

        Resent only until the answer starts (a stream cut half-way is an error, not a retry).
        Raises:
            ClientError: no answer, a non-2xx answer, or a line that is not JSON.
        """
        reply, _ = self._with_retries(data, fields, stream=True)
        if isinstance(reply, Failure):
            raise ClientError(reply.describe())
        with reply:
            try:
                for line in reply.iter_lines():
                    if line.strip():
                        yield json.loads(line)
            except ValueError as exc:
                raise ClientError(f"the server sent a line that is not JSON: {exc}") from None
            except requests.RequestException as exc:
                raise ClientError(f"the streamed answer broke off: {exc.__class__.__name__}: {exc}") from None

    def model_description(self, timeout: float = 5.0) -> Dict[str, Any]:
        """``GET /models/<model>`` on the management API (first entry).
        Raises:
            requests.RequestException / ValueError / IndexError: not reachable or not understood.
        """
        headers = {"Authorization": f"Bearer {self.endpoint.management_token}"} if self.endpoint.management_token else {}
        reply = requests.get(f"{self.endpoint.management_url}/models/{self.endpoint.model}", headers=headers,
                             timeout=timeout)
        reply.raise_for_status()
        return reply.json()[0]
