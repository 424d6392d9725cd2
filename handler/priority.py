"""Lower a worker's CPU priority, so a registration for long work yields the cores to the main
registration.

TorchServe 0.12 cannot cancel work for a client who hung up (the frontend drops the lines of a
closed connection and never tells the worker), so a timeline nobody reads any more runs to its
end. It runs on its own registration's worker; at a higher nice value that worker only gets the
cores the main registration's worker leaves idle (CFS weights: nice 10 is ~1/10 of nice 0).

Linux keeps the nice value per thread, and new threads inherit their creator's: every thread that
exists now is lowered, and the thread pools created later (torch, OpenVINO, FFmpeg) inherit it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def lower_cpu_priority(nice: int) -> int:
    """Raise the nice value of every thread of this process to at least ``nice`` (0..19).

    Returns the nice value of the calling thread afterwards; 0 with ``nice`` 0 (nothing done).
    """
    if nice <= 0:
        return os.getpriority(os.PRIO_PROCESS, 0)
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (ProcessLookupError, PermissionError) as exc:  # a thread that just ended; or no right
            log.info("cpu_nice: thread %d left as it is (%s)", tid, exc)
    return os.getpriority(os.PRIO_PROCESS, 0)
