"""Waiting for a condition instead of for a guessed time: tests synchronise on what happened."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds, asking every ``every`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
