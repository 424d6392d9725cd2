"""A process's resident memory from /proc (Linux): current (VmRSS), peak (VmHWM), and the peak's reset.

Used by the memory tests and the benchmark; ``pid`` may be a TorchServe worker or this process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

MIB = 2**20
# Written to /proc/<pid>/clear_refs, resets the peak (VmHWM) to the current RSS (Linux >= 4.0).
RESET_PEAK = "5"


def _status_bytes(pid: int, field: str) -> Optional[int]:
    """One ``kB`` field of /proc/<pid>/status, in bytes; None when the process or field is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of ``pid`` now (VmRSS)."""
    return _status_bytes(pid, "VmRSS")


def peak_bytes(pid: int) -> Optional[int]:
    """Peak resident memory of ``pid`` since it started or since ``reset_peak`` (VmHWM)."""
    return _status_bytes(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Bring ``pid``'s peak mark (VmHWM) down to its current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text(RESET_PEAK)
        return True
    except OSError:
        return False


def rss_mb(pid: int) -> Optional[float]:
    value = rss_bytes(pid)
    return None if value is None else value / MIB


def peak_rss_mb(pid: int) -> Optional[float]:
    value = peak_bytes(pid)
    return None if value is None else value / MIB


class RssSampler:
    """Polls a process's RSS every ``interval`` s in a thread: a peak where VmHWM cannot be reset."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
