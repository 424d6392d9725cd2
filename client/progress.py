"""What a run shows while it works and when it ends.

On a terminal: a tqdm bar with rate and ETA. Otherwise (a log file, CI): a plain line at most every
``interval`` seconds and at the end, so logs stay short. The summary: answered, failed by reason,
videos/s, p50/p95 latency.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, List, Optional

from tqdm import tqdm


def percentile(values: List[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Tally:
    """Counts and latencies of a run, for the progress line and the summary."""

    total: int
    skipped: int = 0
    answered: int = 0
    failures: Counter = field(default_factory=Counter)
    latencies_ms: List[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.answered + sum(self.failures.values())

    def rate(self, now: Optional[float] = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def record(self, ok: bool, elapsed_ms: float, reason: str = "") -> None:
        if ok:
            self.answered += 1
            self.latencies_ms.append(elapsed_ms)
        else:
            self.failures[reason] += 1

    def summary(self) -> str:
        wall = time.monotonic() - self.started
        failed = sum(self.failures.values())
        lines = [f"answered {self.answered}, failed {failed} of {self.total} sent"
                 + (f" ({self.skipped} skipped: already answered, --resume)" if self.skipped else "")
                 + f"; {wall:.1f} s, {self.rate():.2f} videos/s"]
        if self.latencies_ms:
            lines.append(f"latency p50 {percentile(self.latencies_ms, 0.5) / 1000:.2f} s, "
                         f"p95 {percentile(self.latencies_ms, 0.95) / 1000:.2f} s (per answered video, retries included)")
        for reason, count in self.failures.most_common():
            lines.append(f"failed {count:>5}  {reason}")
        return "\n".join(lines)


class Progress:
    """Shows a Tally as it changes: ``update()`` after each input, ``close()`` at the end."""

    def __init__(self, tally: Tally, stream: Optional[IO[str]] = None, tty: Optional[bool] = None,
                 interval: float = 10.0, unit: str = "video", clock: Callable[[], float] = time.monotonic) -> None:
        stream = stream or sys.stderr
        self.tally, self.stream, self.interval, self.clock, self.unit = tally, stream, interval, clock, unit
        self.shown = -1  # the count the last plain line showed
        self.tty = stream.isatty() if tty is None else tty
        self.bar = tqdm(total=tally.total, unit=unit, file=stream, dynamic_ncols=True, smoothing=0.1) if self.tty else None
        self.last_line = clock()

    def update(self, steps: int = 1) -> None:
        failed = sum(self.tally.failures.values())
        if self.bar is not None:
            self.bar.update(steps)
            if failed:
                self.bar.set_postfix(failed=failed, refresh=False)
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line(now)

    def _line(self, now: float) -> None:
        t = self.tally
        self.shown = t.done
        rate = t.rate(now)
        eta = (t.total - t.done) / rate if rate > 0 else float("nan")
        eta_text = f"ETA {eta:.0f} s" if eta == eta else "ETA ?"
        percent = 100.0 * t.done / t.total if t.total else 100.0
        failed = sum(t.failures.values())
        print(f"progress: {t.done}/{t.total} {self.unit}s ({percent:.0f}%), {failed} failed, "
              f"{rate:.2f} {self.unit}s/s, {eta_text}", file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """A note that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown != self.tally.done and self.tally.total:
            self._line(self.clock())

