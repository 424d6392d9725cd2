"""An unexpected exception while serving a request -> its answer: retryable or not, and findable.

Only conditions that pass are a 503 the clients retry: memory exhausted on the device or host by a
batch (CUDA's or the CPU allocator's out of memory, OpenVINO's failed allocation), or a runtime
that cannot run just now (``RuntimeUnavailable``, e.g. while it reloads). Anything else is a bug or
a fault that the same request would meet again: a 500 ``internal_error``. Every failure gets an
error id, written in the answer and in the log line that carries its traceback.
"""

from __future__ import annotations

import logging
import uuid
from typing import Optional, Tuple

import torch

from handler.errors import RequestError
from handler.runtime_base import RuntimeUnavailable

log = logging.getLogger(__name__)

# How torch (CUDA, the CPU allocator) and OpenVINO (std::bad_alloc, its allocator's check) word an
# exhausted memory in the RuntimeError they raise; lower case.
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "failed to allocate", "bad allocation", "bad_alloc")


def new_error_id() -> str:
    """A short id (12 hex digits) naming one failure in the answer and in the log."""
    return uuid.uuid4().hex[:12]


def transient_reason(error: BaseException) -> Optional[Tuple[str, str]]:
    """(reason, message) of a 503 when ``error`` is a condition that passes, else None."""
    if isinstance(error, RuntimeUnavailable):
        return "model_unavailable", f"the model cannot run just now ({error}); retry shortly"
    out_of_memory = isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in OUT_OF_MEMORY_MARKERS)
    )
    if out_of_memory:
        return "out_of_memory", "the server ran out of memory on this batch (it passes with the load); retry shortly"
    return None


def failure_answer(error: BaseException, doing: str, who: str) -> RequestError:
    """The answer for ``error``, raised while the server tried to ``doing`` (``process this
    video``) for ``who`` (``request 3``, ``4 requests``), logged with its traceback and error id."""
    error_id = new_error_id()
    transient = transient_reason(error)
    if transient is not None:
        reason, message = transient
        log.warning("%s: 503 %s while trying to %s [error %s]: %s: %s",
                    who, reason, doing, error_id, type(error).__name__, error, exc_info=error)
        return RequestError(503, reason, f"{message} (error {error_id})", error_id=error_id)
    log.error("%s: 500 internal_error while trying to %s [error %s]", who, doing, error_id, exc_info=error)
    return RequestError(
        500, "internal_error",
        f"the server failed to {doing} (error {error_id}: the server's log has the details); "
        "sending it again would fail the same way: report the error id",
        error_id=error_id,
    )
