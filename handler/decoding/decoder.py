"""Video bytes -> the frames shown at the instants a caller chooses, decoding only what they need.

Windows are taken in time order. Windows that touch, overlap or lie close together form a run,
decoded in ONE forward pass: one start point before the run (``seek.StreamReader``: verified, with
back-off to byte 0), decode forward, hand out each window as soon as its last frame is seen, stop
after the run. Non-reference frames that no window samples are skipped by FFmpeg (``skip_frame``);
only sampled frames are converted to RGB, scaled (and, for extreme aspect ratios, cropped) to the
working size inside FFmpeg. Audio is never decoded. Every problem with the input becomes a
``RequestError`` with a 4xx status.

A window reached by a seek is decoded as it would be from the start of the stream (see
``seek``): errors before it mean a wrong start point and a decode from further back; errors left
after that are the file's own, and the window reports how many sampled frames they hit.

FFmpeg's log is not used for this: PyAV routes it through Python with the GIL from FFmpeg's
frame-threading workers, which deadlocks (PyAV issues #751, #909), and its per-thread capture does
not see those workers' messages; the per-frame flags are exact and need neither.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

import av
import numpy as np
import torch

from handler.decoding.budget import DecodeBudget, DecodeLimits
from handler.decoding.seek import SKIP_MARGIN_SECONDS, DecodePass, DecodeStats, Shown, StreamReader
from handler.errors import RequestError
from handler.sampling import Window, uniform_instants
from handler.transforms import rotate_frames
from handler.working_frame import FrameConverter, WorkingGeometry, working_geometry

__all__ = ["DecodeStats", "InstantChooser", "SampledWindow", "VideoDecoder"]

# Windows closer than this are decoded in one forward pass: decoding the reference frames of a
# short gap costs less than a seek, which re-decodes from a keyframe (often 2-10 s back).
REJOIN_GAP_SECONDS = 2.0
# Codecs whose packets each carry exactly one frame with that packet's timestamp: for these the
# frames no window samples are known from packet timestamps and their non-reference ones skipped
# even inside windows. Others (MPEG-4 ASP with packed B-frames...) only skip outside windows.
ONE_FRAME_PER_PACKET = {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1"}


# Chooses the instants (s from the video start) to show in a window, from the timestamps of the
# frames in it (None when the container has none): the caller's sampling policy.
InstantChooser = Callable[[Window, Optional[List[float]]], List[float]]


@dataclass
class SampledWindow:
    """Frames sampled for one window: ``frames`` is (T, H, W, 3) uint8, already upright.

    ``frames_decoded`` / ``decode_errors`` count the work done since the previous window was
    handed out (errors: packets FFmpeg refused and frames it flagged corrupt, in the decodes whose
    frames were used); ``corrupt_frames``: how many of the T sampled frames were flagged corrupt;
    ``warnings`` are sentences for the answer (e.g. the frame was cropped)."""

    frames: torch.Tensor
    window: Tuple[float, float]
    frames_decoded: int
    decode_errors: int
    warnings: List[str] = field(default_factory=list)
    corrupt_frames: int = 0


@dataclass
class _WindowFrames:
    """One window being filled: its target instants (absolute s) and the frames put at them so far."""

    window: Tuple[float, float]
    start: float  # absolute
    targets: List[float]
    needed: Optional[Set[int]]  # pts of the frames sampled, when known exactly
    slots: List[np.ndarray] = field(default_factory=list)
    geometry: Optional[WorkingGeometry] = None
    corrupt: int = 0  # slots filled with a frame flagged corrupt

    @property
    def done(self) -> bool:
        return len(self.slots) == len(self.targets)


def _rotation_of(frame: av.VideoFrame) -> int:
    """Display-matrix rotation of a decoded frame, counter-clockwise degrees (0 if none)."""
    try:
        return int(round(frame.rotation or 0))
    except (AttributeError, TypeError, ValueError):
        return 0


class VideoDecoder:
    """An opened video held in memory; sample windows of frames from it.

    ``budget``: the decoding time allowed, shared by every video of one request (default: its
    own ``limits.max_decode_seconds``); only time inside this decoder counts against it.
    Use as a context manager. ``info`` is available after construction; ``warnings`` holds
    sentences for the answer (truncated file, cropped frames, corrupt frames used); ``stats``
    counts work. ``seek=False`` decodes every run from the first byte: the one-pass decode that
    every seeked window must equal (tests compare the two).
    """

    def __init__(
        self, data: bytes, limits: DecodeLimits, short_side: int, *,
        budget: Optional[DecodeBudget] = None, seek: bool = True,
    ) -> None:
        self._budget = budget or DecodeBudget(limits.max_decode_seconds)
        self._limits = limits
        self._short_side = short_side
        self._converter = FrameConverter()
        self._converted: Optional[Tuple[av.VideoFrame, WorkingGeometry, np.ndarray]] = None
        self._mark = (0, 0)  # frames decoded and errors when the last window was handed out
        with self._budget.running():
            self._reader = StreamReader(data, limits, check=self._budget.check, seek=seek)
        self.info = self._reader.info
        self.stats: DecodeStats = self._reader.stats
        self._warnings: List[str] = [self._reader.probe_note] if self._reader.probe_note else []

    # -- sampling ------------------------------------------------------------------------

    def sample(self, window: Window, num_frames: int) -> SampledWindow:
        """``num_frames`` frames evenly spread over ``window`` (seconds from the video start), upright.

        Returns (T, H, W, 3) uint8 frames scaled so the short side is the working size. Each
        sampled instant gets the frame on screen then (the last one at or before it); instants
        are spread from the first to the last frame in the window (``instants_between``). A
        window with fewer frames than ``num_frames`` repeats frames, as uniform subsampling does.
        """
        return next(iter(self.sample_windows([window], num_frames)))

    def sample_windows(self, windows: Sequence[Window], num_frames: int) -> Iterator[SampledWindow]:
        """``sample`` for each of ``windows``: ``frames_at`` with the uniform policy of ``sampling``."""
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        interval = self.info.frame_interval

        def choose(window: Window, times: Optional[List[float]]) -> List[float]:
            return uniform_instants(window, times, num_frames=num_frames, frame_interval=interval)

        return self.frames_at(windows, choose)

    def frames_at(self, windows: Sequence[Window], choose: InstantChooser) -> Iterator[SampledWindow]:
        """For each of ``windows`` (in time order), the frames shown at the instants ``choose`` picks.

        ``choose(window, frame_times)`` gets the timestamps (s from the video start) of the frames
        in ``[start, end)`` of the window, as demuxed (None when the container has none), and
        returns the instants to show, in order; each gets the frame on screen then (the last one
        at or before it). Each window is handed out as soon as it is complete. Windows that touch,
        overlap or are less than ``REJOIN_GAP_SECONDS`` apart are decoded in one forward pass (no
        frame decoded twice); others each get their own seek. Each result is identical to asking
        for its window alone. Memory: the windows in flight, not the video.
        """
        windows = [(float(a), float(b)) for a, b in windows]
        if any(b < a for a, b in windows) or any(b[0] < a[0] for a, b in zip(windows, windows[1:])):
            raise ValueError(f"windows must be (start, end) pairs in time order, got {windows[:4]}...")
        runs: List[List[Window]] = []
        for window in windows:
            if runs and window[0] - max(b for _, b in runs[-1]) < REJOIN_GAP_SECONDS:
                runs[-1].append(window)
            else:
                runs.append([window])
        self._mark = (self.stats.frames_decoded, self._reader.errors_used())
        return self._budget.timed(window for run in runs for window in self._decode_run(self._wanted(run, choose)))

    def _wanted(self, run: List[Window], choose: InstantChooser) -> List[_WindowFrames]:
        """Instants of each window of a run, from one demux pass over the run's packets."""
        reader = self._reader
        origin, tolerance, time_base = reader.origin, reader.tolerance, reader.time_base
        stamps = reader.timestamps(origin + run[0][0], origin + max(b for _, b in run))
        exact = self.info.codec in ONE_FRAME_PER_PACKET
        wanted = []
        for window in run:
            start, end = origin + window[0], origin + window[1]
            inside = sorted(p for p in stamps or () if start - tolerance <= p * time_base < end - tolerance)
            seconds = [p * time_base for p in inside]
            instants = choose(window, None if stamps is None else [t - origin for t in seconds])
            if not instants:
                raise ValueError(f"no instants chosen for the window {window}")
            targets = [origin + t for t in instants]
            needed: Optional[Set[int]] = None
            if inside and exact:  # the frames shown at the instants are known: skip all others
                needed = {inside[max(0, bisect.bisect_right(seconds, t + tolerance) - 1)] for t in targets}
            wanted.append(_WindowFrames(window=window, start=start, targets=targets, needed=needed))
        return wanted

    def _decode_run(self, plans: List[_WindowFrames]) -> Iterator[SampledWindow]:
        """Each of a run's windows, filled from one forward decode reaching its first instant."""
        tolerance = self._reader.tolerance
        needed: Set[int] = set()
        spans: List[Tuple[float, float]] = []
        for plan in plans:
            if plan.needed is not None:
                needed |= plan.needed
            else:
                spans.append((plan.targets[0] - SKIP_MARGIN_SECONDS, plan.targets[-1] + SKIP_MARGIN_SECONDS))
        pending = list(plans)
        previous: Optional[Shown] = None
        for t, frame in self._reader.frames_covering(plans[0].targets[0], needed=needed, spans=_merged(spans)):
            for plan in pending:
                while not plan.done and t > plan.targets[len(plan.slots)] + tolerance:
                    self._fill(plan, previous or (t, frame))
            previous = (t, frame)
            while pending and pending[0].done:
                yield self._finish(pending.pop(0))
            if not pending:
                return
        for plan in pending:
            if previous is None or previous[0] + self.info.frame_interval < plan.start - tolerance:
                raise self._no_frames(plan, self._reader.last_pass)
            while not plan.done:
                self._fill(plan, previous)
            yield self._finish(plan)

    def _fill(self, plan: _WindowFrames, shown: Shown) -> None:
        """Put the frame ``shown`` at the plan's next instant, converted once to its working size."""
        frame = shown[1]
        if plan.geometry is None:
            plan.geometry = working_geometry(
                frame.width, frame.height, rotation=_rotation_of(frame), short_side=self._short_side,
                max_aspect_ratio=self._limits.max_aspect_ratio,
            )
        cached = self._converted
        if cached is None or cached[0] is not frame or cached[1] != plan.geometry:
            cached = (frame, plan.geometry, self._converter.convert(frame, plan.geometry))
            self._converted = cached
        plan.slots.append(cached[2])
        plan.corrupt += frame.is_corrupt
        self.stats.frames_sampled += 1

    def _finish(self, plan: _WindowFrames) -> SampledWindow:
        geometry = plan.geometry
        if geometry is None:  # cannot happen: a finished plan has been filled at least once
            raise RuntimeError("window finished without frames")
        frames = rotate_frames(torch.from_numpy(np.stack(plan.slots)), geometry.rotation)
        self.info = replace(self.info, rotation=geometry.rotation)
        warnings = []
        note = geometry.note()
        if note:
            warnings.append(note)
            if note not in self._warnings:
                self._warnings.append(note)
        used = self._reader.errors_used()
        decoded, errors = self.stats.frames_decoded - self._mark[0], used - self._mark[1]
        self._mark = (self.stats.frames_decoded, used)
        self.stats.frames_corrupt_sampled += plan.corrupt
        plan.slots = []  # the tensor owns the frames now
        return SampledWindow(frames, plan.window, decoded, errors, warnings, corrupt_frames=plan.corrupt)

    @property
    def warnings(self) -> List[str]:
        """Sentences for the answer's warnings: truncated file, cropped frames, corrupt frames used."""
        warnings = list(self._warnings)
        if self.stats.frames_corrupt_sampled:
            warnings.append(
                f"{self.stats.frames_corrupt_sampled} of the {self.stats.frames_sampled} frames sampled from this "
                "video failed to decode cleanly, even decoding from the start of the stream (damaged data that "
                "FFmpeg concealed); the answer is computed from them"
            )
        return warnings

    def _no_frames(self, plan: _WindowFrames, pass_: Optional[DecodePass]) -> RequestError:
        origin = self._reader.origin
        errors = self._reader.errors_used() - self._mark[1]
        if pass_ is not None and pass_.frames:
            detail = (f"; decoding {pass_.where} found {pass_.frames} frames at "
                      f"{pass_.first - origin:.2f}-{pass_.last - origin:.2f} s")
        else:
            detail = f"; decoding {pass_.where if pass_ else 'the stream'} found no decodable frame"
        if errors:
            detail += f" ({errors} decode errors)"
        if not (self.info.width and self.info.height):
            detail += "; the stream declares no valid frame size"
        return RequestError(
            422, "no_frames", f"no decodable frame in the window {plan.window[0]:.2f}-{plan.window[1]:.2f} s{detail}",
        )

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merged(spans: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out: List[Tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
