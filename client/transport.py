"""HTTP to the model: kept-alive sessions, retries with backoff on what is safe to resend, and
each outcome as an Answer or a Failure with its reason.

The protocol is the endpoint's: TorchServe's ``/predictions`` (the raw video, options as headers)
or KServe v1/v2 (a JSON envelope, client/kserve.py), whose answers are read back as the
``/predictions`` answer. Timelines go to the model's long-work registration
(``Endpoint.timeline_url``; a server without one answers 404 and the request goes to the model
itself) and stream only over ``/predictions``.

Resent (classification is idempotent), after a jittered exponential backoff (or the server's
``Retry-After``, whichever is longer, within ``max_backoff``): a connection failure (refused,
reset, no answer within ``timeout``: a batch lost while a worker was scaled down), 503 (a condition
that passes: overload, no worker yet, a worker restarting), 429 (too many requests), and
TorchServe's own answer for a worker that went away mid-request ("Worker died." / "Worker scaled
down.", 500 or 507 from its frontend, which cannot say 503). Never any other 5xx (a bug: the same
request fails the same way) and never a 4xx (the request itself is wrong).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import requests
from requests.adapters import HTTPAdapter

from client import kserve
from client.endpoint import ClientError, Endpoint

RETRYABLE_STATUS = (429, 503)
# TorchServe's frontend (not our handler) fails the requests of a worker that died or was scaled
# down with these exact messages, as 500/507 with type InternalServerException: a worker restarting.
WORKER_GONE_MESSAGES = ("Worker died.", "Worker scaled down.")
WORKER_GONE_TYPE = "InternalServerException"
TIMELINE_ON_KSERVE = (
    "a timeline streams window by window only over TorchServe's /predictions (--protocol torchserve); "
    "KServe answers a request in one piece. Over KServe, `python -m client live FILE --hop SECONDS` sends "
    "a file window by window, one request each")
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
    retry_after: Optional[float] = None  # seconds, from a 429/503's Retry-After header

    def describe(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{where}: {self.reason}: {self.message}"


Outcome = Union[Answer, Failure]


def _body(reply: requests.Response) -> Any:
    try:
        return reply.json()
    except ValueError:
        return None


def worker_gone(status: int, body: Any) -> bool:
    """TorchServe's frontend answer for a request whose worker died or was scaled down."""
    return (status >= 500 and isinstance(body, dict) and body.get("type") == WORKER_GONE_TYPE
            and str(body.get("message", "")).strip() in WORKER_GONE_MESSAGES)


def retry_after(reply: requests.Response) -> Optional[float]:
    """A Retry-After header given in seconds (an HTTP date is ignored: the backoff applies)."""
    try:
        return max(0.0, float(reply.headers.get("Retry-After", "")))
    except ValueError:
        return None


def failure_from_reply(reply: requests.Response, attempts: int) -> Failure:
    """A non-2xx reply in the server's own words: the handler's {reason, message}, TorchServe's
    {code, type, message} or KServe's {error}."""
    body = _body(reply)
    if isinstance(body, dict):
        reason = str(body.get("reason") or body.get("type") or f"http_{reply.status_code}")
        message = str(body.get("message") or body.get("error") or json.dumps(body))[:500]
        if body.get("error_id") and str(body["error_id"]) not in message:
            message += f" (error id {body['error_id']})"
    else:
        reason, message = f"http_{reply.status_code}", (reply.text.strip()[:500] or reply.reason or "")
    if reply.status_code == 400 and "InvalidKey" in reply.text:
        message += f" ({TOKEN_HINT})"
    retryable = reply.status_code in RETRYABLE_STATUS or worker_gone(reply.status_code, body)
    return Failure(reason, message, reply.status_code, attempts, retryable,
                   retry_after(reply) if reply.status_code in RETRYABLE_STATUS else None)


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

    def request(self, data: bytes, fields: Mapping[str, str]) -> Tuple[bytes, Dict[str, str]]:
        """The body and headers of one request in the endpoint's protocol: TorchServe's raw video
        with the options as headers, or KServe's JSON envelope; then the token, then ``--header``s."""
        if self.endpoint.protocol == kserve.TORCHSERVE:
            body, headers = data, {"Content-Type": "application/octet-stream", **fields}
        else:
            body, headers = kserve.codec(self.endpoint.protocol).encode(data, fields)
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        for name, value in self.endpoint.headers:  # replaces a header of the same name, whatever its case
            for same in [key for key in headers if key.lower() == name.lower()]:
                del headers[same]
            headers[name] = value
        return body, headers

    def answer(self, body: Any, fields: Mapping[str, str]) -> Dict[str, Any]:
        """A 2xx answer's JSON as the ``/predictions`` answer.
        Raises:
            ValueError: not an answer of the endpoint's protocol.
        """
        if self.endpoint.protocol != kserve.TORCHSERVE:
            return kserve.codec(self.endpoint.protocol).decode(body, fields)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return body

    def url_for(self, fields: Mapping[str, str]) -> str:
        """Where a request with these fields goes: timelines and streamed answers (an action
        detector's keyframes over a long video) to the long-work registration."""
        long_work = any(str(fields.get(name, "")).strip().lower() in ("true", "1", "yes", "on") for name in ("timeline", "stream"))
        if long_work and self.endpoint.timeline_url and not self._no_timeline_registration:
            return self.endpoint.timeline_url
        return self.endpoint.url

    def _post(self, data: bytes, fields: Mapping[str, str], attempt: int, stream: bool):
        """One POST: the reply, or a Failure when no HTTP answer came."""
        url = self.url_for(fields)
        body, headers = self.request(data, fields)
        try:
            reply = self.session().post(url, data=body, headers=headers, timeout=self.timeout, stream=stream)
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
            if failure.retry_after is not None:  # the server said when: no sooner, within max_backoff
                delay = min(self.max_backoff, max(delay, failure.retry_after))
            if self.on_retry:
                self.on_retry(failure, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def send(self, data: bytes, fields: Mapping[str, str]) -> Outcome:
        """POST one video; the JSON answer, or why there is none."""
        reply, attempts = self._with_retries(data, fields, stream=False)
        if isinstance(reply, Failure):
            return reply
        try:
            return Answer(self.answer(_body(reply), fields), attempts)
        except ValueError as exc:
            return Failure("bad_answer", f"HTTP {reply.status_code} with an answer that is not "
                           f"{self.endpoint.protocol}'s ({exc}): {reply.text[:200]!r}", reply.status_code, attempts)

    def stream(self, data: bytes, fields: Mapping[str, str]) -> Iterator[Dict[str, Any]]:
        """POST one video asking for a streamed answer; yield each JSON line as it arrives.

        Resent only until the answer starts (a stream cut half-way is an error, not a retry).
        Raises:
            ClientError: no answer, a non-2xx answer, a line that is not JSON, or a KServe endpoint
            (KServe answers in one piece).
        """
        if self.endpoint.protocol != kserve.TORCHSERVE:
            raise ClientError(TIMELINE_ON_KSERVE)
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
