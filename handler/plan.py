"""What to compute for one request, within its limits: which windows of each video, how many crops.

The limits that need no video (upload size, videos x clips x crops) are checked as soon as the
request is parsed; the plan is made from the request's options and each video's probed duration,
before a single frame is decoded. A request over a limit is refused here with the numbers and the
way out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import List, Sequence

from handler.contract import PreprocessContract
from handler.errors import RequestError
from handler.request_options import RequestOptions
from handler.serve_settings import ServeOptions
from handler.sampling import Window, clip_windows, timeline_windows

# A stride suggested to a request over its budget is a whole number of these steps per second.
STRIDE_STEPS = 10
# A window planned in a cut (source_offset) may start this far before the cut's first frame, and end
# this far past its measured end (float rounding of the offset)...
CUT_SLACK_SECONDS = 1e-3
# ... or this far past it when the cut reaches the source's end: the cut's end is measured from its
# last packet, the source's duration may be the declared one (decoding/probe.py accepts up to 1 s).
CUT_END_SLACK_SECONDS = 1.0


# -- per-request limits (checked before any decoding) -------------------------------------------


def _bytes_text(count: int) -> str:
    return f"{count:,} bytes ({count / 2**20:.6g} MiB)"


def check_upload_size(videos: List[bytes], limit_bytes: int) -> None:
    """413 when the videos of one request together exceed ``limit_bytes``."""
    total = sum(len(video) for video in videos)
    if total > limit_bytes:
        what = "the video is" if len(videos) == 1 else f"the {len(videos)} videos are"
        raise RequestError(
            413, "upload_too_large",
            f"{what} {_bytes_text(total)}; the limit for one request is {_bytes_text(limit_bytes)}",
        )


def check_view_budget(views: int, limit: int, *, what: str, way_out: str) -> None:
    """413 when a request asks for more forwards (``views``) than one request may cost."""
    if views > limit:
        raise RequestError(
            413, "over_budget",
            f"{what} = {views} views; the limit for one request is {limit} views; {way_out}",
        )


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPlan:
    """The windows (seconds from the upload's first frame, in time order: what is decoded) and crops
    of one video. An upload cut from a longer video (``source_offset``) names them in the source's
    clock, ``offset`` seconds later (render.py)."""

    windows: List[Window]
    crops: int
    warnings: List[str] = field(default_factory=list)

    @property
    def views(self) -> int:
        return len(self.windows) * self.crops


def view_limit(options: RequestOptions, serve: ServeOptions) -> int:
    """Views one request may cost: a streamed answer restarts TorchServe's response timeout with
    every line, an answer in one piece must fit inside it."""
    return serve.max_streamed_views_per_request if options.stream else serve.max_views_per_request


def check_requested_views(videos: int, options: RequestOptions, serve: ServeOptions) -> None:
    """Before opening any video: videos x clips x crops within budget (a timeline's window count
    needs the durations and is checked by ``plan_videos``)."""
    windows = 1 if options.timeline else options.clips
    check_view_budget(
        videos * windows * options.crops, view_limit(options, serve),
        what=f"{videos} video(s) x {windows} window(s) x {options.crops} crop(s)",
        way_out="ask for fewer videos, clips or crops per request",
    )


def _span(duration: float, options: RequestOptions) -> Window:
    start = options.start or 0.0
    end = duration if options.end is None else min(options.end, duration)
    if start >= duration:
        raise RequestError(
            400, "bad_option", f"start={start:g} s is at or past the end of the video ({duration:.3f} s)"
        )
    return start, end


def _in_upload(windows: List[Window], duration: float, options: RequestOptions) -> List[Window]:
    """Windows planned in the source's clock, moved to the upload's (a cut starting at
    ``options.offset``); 400 when one is not inside the ``duration`` seconds the upload holds."""
    offset = options.offset
    moved = [(a - offset, b - offset) for a, b in windows]
    assert options.source_duration is not None
    reaches_end = offset + duration >= options.source_duration - CUT_END_SLACK_SECONDS
    end_slack = CUT_END_SLACK_SECONDS if reaches_end else CUT_SLACK_SECONDS
    for (a, b), (source_a, source_b) in zip(moved, windows):
        if a < -CUT_SLACK_SECONDS or a >= duration or b > duration + end_slack:
            raise RequestError(
                400, "window_outside_upload",
                f"the window {source_a:.3f}-{source_b:.3f} s of the source is not inside the upload, which holds "
                f"its seconds {offset:.3f}-{offset + duration:.3f} (source_offset={offset:g}); "
                "send the whole video, or a cut covering the window",
            )
    return moved


def plan_video(duration: float, contract: PreprocessContract, options: RequestOptions) -> VideoPlan:
    """Windows for a video of ``duration`` seconds.

    ``clips``: spread over the span as ``sampling.clip_windows`` does. ``timeline``: one window
    every ``stride`` seconds (default one window length) from the span's start. With
    ``source_duration`` the upload is a cut of a longer video: windows are planned over the source
    exactly as for the whole video, then moved to the upload's clock (``_in_upload``).
    """
    if options.source_duration is not None:
        source_plan = plan_video(options.source_duration, contract, replace(options, source_duration=None))
        return replace(source_plan, windows=_in_upload(source_plan.windows, duration, options))
    start, end = _span(duration, options)
    length = end - start
    warnings: List[str] = []
    if options.timeline:
        stride = options.stride or contract.window_seconds
        windows = timeline_windows(start, end, contract.window_seconds, stride)
    else:
        windows = [(start + a, start + b) for a, b in clip_windows(length, contract.window_seconds, options.clips)]
        if options.clips > len(windows):
            warnings.append(
                f"the video{' part' if options.start or options.end else ''} is shorter than one window; "
                f"{len(windows)} window used instead of {options.clips}"
            )
    return VideoPlan(windows=windows, crops=options.crops, warnings=warnings)


def plan_videos(
    durations: Sequence[float], contract: PreprocessContract, options: RequestOptions, serve: ServeOptions
) -> List[VideoPlan]:
    """One plan per video; 413 when their views together exceed the request's budget."""
    plans = [plan_video(duration, contract, options) for duration in durations]
    views = sum(plan.views for plan in plans)
    limit = view_limit(options, serve)
    if options.timeline and views > limit:
        windows = sum(len(plan.windows) for plan in plans)
        covered = sum(plan.windows[-1][1] - plan.windows[0][0] for plan in plans)
        # Rounded up to the stride step suggested, so that the stride named really fits.
        fitting_stride = math.ceil(covered / max(1, limit // options.crops) * STRIDE_STEPS) / STRIDE_STEPS
        streaming_helps = not options.stream and serve.streaming_extends_budget
        way_out = (
            f"look at part of the video (start/end), or use a longer stride (stride={fitting_stride:g} fits)"
            + (f", or stream it (stream=true allows {serve.max_streamed_views_per_request} views)" if streaming_helps else "")
            # This registration keeps its worker for short answers; long timelines have their own.
            + (f", or send it to /predictions/{serve.timeline_model} (stream=true), whose worker takes long timelines"
               if serve.timeline_model else "")
        )
        check_view_budget(views, limit, what=f"the timeline has {windows} window(s) x {options.crops} crop(s)", way_out=way_out)
    return plans
