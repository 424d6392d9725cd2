"""What a live run shows and writes: a table redrawn in place on a terminal (a line per window
otherwise), JSON lines (``--out``) per window and per event, smoothing over ``--average`` windows
and ``--event-threshold`` events, and the summary at the end.

A window line: ``{"window", "segment", "start", "end", "stream_start", "stream_end", "status",
"predictions", "latency_ms", "handler_ms", "mode", "clip_bytes", "clip_options"}``: ``start``/``end`` in seconds
on the session's clock (from its first frame, gaps included), ``stream_*`` in the source's own
timestamps, ``error`` instead of ``predictions`` when it failed, ``clip_options`` the start/end
sent with the clip (seconds from its first frame). An event line: ``{"event": "start"|"end",
"label", "t", "score"}``.

With ``--people`` (an action detector) a window line carries ``keyframes`` instead of
``predictions``: the server's keyframe (``time``, ``window``, ``persons``: box, score, actions),
as ``python -m client people`` prints it; ``clip_options`` is then the keyframe sent. On screen,
each window's persons on one line (``client.people.persons_text``).
"""

from __future__ import annotations

import json
from collections import deque
from typing import IO, Any, Deque, Dict, List, Optional, Tuple

from client.live.runner import LiveStats, WindowResult
from client.options import answer_key
from client.people import persons_text
from client.progress import percentile
from handler.option_table import OUTPUTS
from client.transport import Answer

BAR_WIDTH = 30
# The answer's keys of every output kind a request may ask for, and an action detector's keyframes.
OUTPUT_KEYS = tuple(dict.fromkeys(answer_key(kind) for kinds in OUTPUTS.values() for kind in kinds)) + ("keyframes",)


def window_line(result: WindowResult, topk: int) -> Dict[str, Any]:
    line: Dict[str, Any] = {"window": result.index, "segment": result.segment, "start": round(result.start, 4),
                            "end": round(result.end, 4),
                            "stream_start": round(result.start - result.stream_offset, 4),
                            "stream_end": round(result.end - result.stream_offset, 4)}
    if isinstance(result.outcome, Answer):
        body = result.outcome.body
        line["status"] = "ok"
        for key in OUTPUT_KEYS:  # whatever the window's answer holds: labels, embedding, logits...
            if key in body:
                line[key] = body[key][:topk] if key == "predictions" else body[key]
        if "handler_total" in (body.get("timings_ms") or {}):
            line["handler_ms"] = body["timings_ms"]["handler_total"]  # the server's share of the latency
    else:
        failure = result.outcome
        line.update(status="failed", error={"reason": failure.reason, "message": failure.message,
                                            "http_status": failure.status})
    line.update(latency_ms=round(result.latency_s * 1000, 1), mode=result.mode, clip_bytes=result.clip_bytes,
                clip_options=result.fields)
    if result.partial:
        line["partial"] = True  # the window's start was older than the buffer's oldest keyframe
    return line


class Smoother:
    """Mean probability of each label over the last ``average`` answered windows (a label missing
    from a window's answer counts 0 there), and events: a label whose mean reaches ``threshold``
    starts, one that falls below ends."""

    def __init__(self, average: int = 1, threshold: Optional[float] = None) -> None:
        self.recent: Deque[Dict[str, float]] = deque(maxlen=max(1, average))
        self.threshold = threshold
        self.active: Dict[str, float] = {}
        self.last_t = 0.0
        self.segment: Optional[int] = None

    def update(self, predictions: List[Dict[str, Any]], t: float, segment: int) -> Tuple[List[Tuple[str, float]], List[Dict[str, Any]]]:
        """The smoothed (label, score) list, best first, and the events at window end ``t``."""
        events: List[Dict[str, Any]] = []
        if self.segment is not None and segment != self.segment:
            events += self.close()  # a gap in the stream ends what was happening
            self.recent.clear()
        self.segment, self.last_t = segment, t
        self.recent.append({str(p["label"]): float(p["probability"]) for p in predictions})
        labels = {label for window in self.recent for label in window}
        scores = sorted(((label, sum(w.get(label, 0.0) for w in self.recent) / len(self.recent)) for label in labels),
                        key=lambda item: -item[1])
        if self.threshold is not None:
            current = {label: score for label, score in scores if score >= self.threshold}
            for label in sorted(set(self.active) - set(current)):
                events.append({"event": "end", "label": label, "t": round(t, 4),
                               "score": round(dict(scores).get(label, 0.0), 6)})
                del self.active[label]
            for label, score in scores:
                if label in current and label not in self.active:
                    self.active[label] = t
                    events.append({"event": "start", "label": label, "t": round(t, 4), "score": round(score, 6)})
        return scores, events

    def close(self) -> List[Dict[str, Any]]:
        """End every event still going (at the last window's end)."""
        events = [{"event": "end", "label": label, "t": round(self.last_t, 4), "score": None} for label in sorted(self.active)]
        self.active.clear()
        return events


class Display:
    """Answers as they come on ``stream``: on a terminal a table redrawn in place, otherwise a line
    per window. Notes (connections, drops, events, the summary) go to ``notes`` as lines."""

    def __init__(self, stream: IO[str], notes: IO[str], tty: bool, topk: int) -> None:
        self.stream, self.notes, self.tty, self.topk = stream, notes, tty, topk
        self.drawn = 0  # lines of the table on screen

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def note(self, text: str) -> None:
        self._clear()
        self.stream.flush()
        print(text, file=self.notes, flush=True)

    def window(self, result: WindowResult, scores: List[Tuple[str, float]], stats: LiveStats, smoothed: bool) -> None:
        span = f"{result.start:8.2f}-{result.end:.2f} s"
        latency = f"{result.latency_s:.2f} s"
        if not isinstance(result.outcome, Answer):
            self.note(f"{span}  failed: {result.outcome.describe()[:200]}  (after {latency})")
            return
        keyframes = result.outcome.body.get("keyframes")
        if keyframes is not None:  # an action detector's answer (--people): who is doing what, one line
            self._clear()
            persons = "  ".join(persons_text(keyframe) for keyframe in keyframes) or "no keyframe"
            print(f"{span}  {persons}  latency {latency}", file=self.stream, flush=True)
            return
        top = scores[: self.topk]
        if not self.tty:
            labels = "  ".join(f"{label} {score:.4f}" for label, score in top)
            print(f"{span}  {labels}  latency {latency}", file=self.stream, flush=True)
            return
        self._clear()
        width = max([5] + [len(label) for label, _ in top])
        lines = [f"window {result.index}  {span}  latency {latency}  "
                 f"sent {stats.sent}  skipped {stats.skipped}  failed {stats.failed}"
                 + ("  (smoothed)" if smoothed else "")]
        best = top[0][1] if top and top[0][1] > 0 else 1.0
        for rank, (label, score) in enumerate(top, 1):
            bar = "#" * max(1, round(BAR_WIDTH * score / best))
            lines.append(f"{rank:>3}  {label:<{width}}  {score:.4f}  {bar}")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)


class JsonLines:
    """Writes each line as it comes, flushed (a crash loses nothing written)."""

    def __init__(self, handle: Optional[IO[str]]) -> None:
        self.handle = handle

    def write(self, line: Dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(line) + "\n")
            self.handle.flush()


def summary(stats: LiveStats, hop: float) -> str:
    hops = stats.sent + stats.skipped
    share = f" ({100.0 * stats.skipped / hops:.0f}% of {hops} hops)" if hops else ""
    lines = [f"windows sent {stats.sent} (answered {stats.answered}, failed {stats.failed}), "
             f"skipped {stats.skipped}{share}; stream drops {stats.drops}"]
    if stats.latencies_s:
        lines.append(f"latency from a window's last frame to its answer: p50 {percentile(stats.latencies_s, 0.5):.2f} s, "
                     f"p95 {percentile(stats.latencies_s, 0.95):.2f} s, max {max(stats.latencies_s):.2f} s (hop {hop:g} s)")
    return "\n".join(lines)
