"""Parse one action-detection request: its video, the person boxes it gives, its options.

The video comes as for the classifier (``handler.protocol``: raw body, multipart, KServe v1/v2),
one per request. The detection options come as multipart fields, headers (``boxes: ...`` or
``X-Boxes: ...``) or KServe ``parameters``:

- ``boxes``: JSON, the persons at each keyframe time, in the video's upright pixels (as a player
  shows it, full resolution): ``{"2.0": [[x1, y1, x2, y2], ...], ...}`` or
  ``[{"time": 2.0, "boxes": [[x1, y1, x2, y2], ...]}, ...]``; the times are the keyframes;
- ``keyframes``: seconds, ``1.5,4`` or a JSON list (without boxes: persons are found by the server);
- ``stride``: a keyframe every this many seconds (from ``start`` to ``end``);
- ``threshold``: actions at or above this probability (default ``DEFAULT_THRESHOLD``);
- ``topk``: the k most probable actions (with ``threshold``: the k most probable of those);
- ``stream``: one JSON line per keyframe as it is answered, then the full answer (plain requests).

Everything here is checked before any decoding: form, finiteness, order, counts against the
limits (``ServeOptions.max_persons_per_keyframe``, ``max_keyframes_per_request`` or, streamed,
``max_streamed_keyframes_per_request``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from handler.errors import RequestError
from handler.option_table import MAX_SECONDS, request_option
from handler.plan import check_upload_size
from handler.protocol import PLAIN, ParsedRequest, parse_row
from handler.request_options import read_option
from handler.serve_settings import ServeOptions

DEFAULT_THRESHOLD = 0.5  # AVA's usual action threshold (mmaction2's and PySlowFast's demos)
PEOPLE_OPTIONS = ("boxes", "keyframes", "stride", "start", "end", "threshold", "topk", "stream")
# Classifier options with no meaning for per-person actions: refused, not ignored.
NOT_FOR_PEOPLE = ("clips", "crops", "timeline", "output", "normalize")
# Upper bound on the JSON text of the boxes option (a header or a field), before it is parsed.
MAX_BOXES_TEXT = 1 << 20

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class PeopleOptions:
    """What one request asks for.

    ``boxes``: keyframe time (s) -> its persons' boxes ``(x1, y1, x2, y2)`` in upright video
    pixels, or None (the server finds persons); ``keyframes``: times asked for without boxes;
    ``stride``/``start``/``end``: keyframes every ``stride`` s; ``threshold``/``topk``: which actions;
    ``stream``: a JSON line per keyframe as it is answered.
    """

    boxes: Optional[Dict[float, List[Box]]] = None
    keyframes: Optional[List[float]] = None
    stride: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    threshold: Optional[float] = DEFAULT_THRESHOLD
    topk: Optional[int] = None
    stream: bool = False


@dataclass
class PeopleRequest:
    parsed: ParsedRequest
    options: PeopleOptions


def _bad(message: str, status: int = 400, reason: str = "bad_option") -> RequestError:
    return RequestError(status, reason, message)


def _text(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    return raw if isinstance(raw, str) else json.dumps(raw)


def _number(name: str, raw: Any, low: float, high: float) -> float:
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise _bad(f"{name} must be a number in {low:g}..{high:g}, got {str(raw)[:40]!r}")
    return value


def _json(name: str, raw: Any) -> Any:
    if not isinstance(raw, (str, bytes, bytearray)):
        return raw  # a KServe parameter already decoded
    text = _text(raw)
    if len(text) > MAX_BOXES_TEXT:
        raise _bad(f"{name} is {len(text):,} characters; at most {MAX_BOXES_TEXT:,}", 413, "boxes_too_large")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _bad(f"{name} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:  # e.g. a megabyte of "[": Python's parser recurses per level
        raise _bad(f"{name} is nested too deeply to be boxes") from None


def read_box(raw: Any, where: str) -> Box:
    """``[x1, y1, x2, y2]``: four finite numbers with x1 < x2 and y1 < y2 (400 otherwise)."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise _bad(f"{where} must be [x1, y1, x2, y2], got {json.dumps(raw)[:80]}", reason="bad_box")
    values = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(f"{where} must hold four finite numbers, got {json.dumps(raw)[:80]}", reason="bad_box")
        values.append(float(value))
    x1, y1, x2, y2 = values
    if not (x1 < x2 and y1 < y2):
        raise _bad(f"{where} = {values} needs x1 < x2 and y1 < y2 (corners top-left, bottom-right)", reason="bad_box")
    return x1, y1, x2, y2


def read_boxes(raw: Any, serve: ServeOptions, stream: bool = False) -> Dict[float, List[Box]]:
    """The ``boxes`` option: keyframe time -> boxes, each checked; 400/413 naming what is wrong."""
    value = _json("boxes", raw)
    if isinstance(value, Mapping):
        entries = list(value.items())
    elif isinstance(value, list) and all(isinstance(e, Mapping) for e in value):
        entries = [(e.get("time"), e.get("boxes")) for e in value]
    else:
        raise _bad('boxes must be {"<seconds>": [[x1, y1, x2, y2], ...]} or [{"time": s, "boxes": [...]}, ...]')
    if not entries:
        raise _bad("boxes names no keyframe")
    if len(entries) > keyframe_limit(stream, serve):
        raise _too_many_keyframes(len(entries), serve, stream)
    boxes: Dict[float, List[Box]] = {}
    for time_raw, listed in entries:
        time = _number("a keyframe time in boxes", time_raw, 0, MAX_SECONDS)
        if time in boxes:
            raise _bad(f"boxes names the keyframe at {time:g} s twice")
        if not isinstance(listed, list):
            raise _bad(f"the boxes at {time:g} s must be a list of [x1, y1, x2, y2]")
        if len(listed) > serve.max_persons_per_keyframe:
            raise _bad(f"{len(listed)} boxes at {time:g} s; at most {serve.max_persons_per_keyframe} persons per keyframe",
                       413, "too_many_persons")
        boxes[time] = [read_box(box, f"boxes at {time:g} s, box {i}") for i, box in enumerate(listed)]
    return dict(sorted(boxes.items()))


def keyframe_limit(stream: bool, serve: ServeOptions) -> int:
    """Keyframes one request may ask for: a streamed answer restarts TorchServe's response timeout
    with every line, an answer in one piece must fit inside it."""
    return serve.max_streamed_keyframes_per_request if stream else serve.max_keyframes_per_request


def streams_longer(serve: ServeOptions) -> bool:
    """Whether a streamed answer may hold more keyframes than one in one piece (the ``_timeline``
    registration): then its decoding budget is per keyframe, as a streamed timeline's is per window."""
    return serve.max_streamed_keyframes_per_request > serve.max_keyframes_per_request


def keyframe_way_out(stream: bool, serve: ServeOptions) -> str:
    """What a request over the keyframe limit can do instead, besides asking for fewer."""
    if not stream and streams_longer(serve):
        return f", or stream it (stream=true allows {serve.max_streamed_keyframes_per_request} keyframes)"
    if serve.timeline_model:  # this registration keeps its worker for short answers
        return f", or send it to /predictions/{serve.timeline_model} (stream=true), whose worker takes long videos"
    return ""


def _too_many_keyframes(count: int, serve: ServeOptions, stream: bool) -> RequestError:
    return _bad(f"{count} keyframes asked for; at most {keyframe_limit(stream, serve)} per "
                f"{'streamed ' if stream else ''}request: send fewer keyframes or a longer stride"
                f"{keyframe_way_out(stream, serve)}", 413, "too_many_keyframes")


def _keyframes(raw: Any, serve: ServeOptions, stream: bool) -> List[float]:
    text = _text(raw).strip() if isinstance(raw, (str, bytes, bytearray)) else None
    values = _json("keyframes", raw) if text is None or text.startswith("[") else text.split(",")
    if not isinstance(values, list) or not values:
        raise _bad("keyframes must be seconds: 1.5,4 or [1.5, 4]")
    if len(values) > keyframe_limit(stream, serve):
        raise _too_many_keyframes(len(values), serve, stream)
    times = sorted({_number("a keyframe", v, 0, MAX_SECONDS) for v in values})
    return times


def people_fields(row: Any, headers: Mapping[str, str], parsed: ParsedRequest) -> Dict[str, Any]:
    """Raw detection-option values: headers < multipart fields < KServe parameters."""
    lowered = {str(k).lower(): v for k, v in (headers or {}).items()}
    found: Dict[str, Any] = {}
    for name in PEOPLE_OPTIONS + NOT_FOR_PEOPLE:
        for key in (name, f"x-{name}"):
            if key in lowered:
                found[name] = lowered[key]
        if isinstance(row, Mapping) and row.get(name) is not None:
            found[name] = row[name]
        if parsed.options.get(name) is not None:
            found[name] = parsed.options[name]
    return found


def resolve_people_options(given: Mapping[str, Any], serve: ServeOptions, num_classes: int) -> PeopleOptions:
    """Validate the detection options a request gave; 400/413 naming what is wrong."""
    refused = [name for name in NOT_FOR_PEOPLE if given.get(name) is not None]
    if refused:
        raise _bad(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to an action detector; "
                   f"its options are {', '.join(PEOPLE_OPTIONS)}")
    stream = bool(read_option(request_option("stream"), given["stream"], {})) if given.get("stream") is not None else False
    boxes = read_boxes(given["boxes"], serve, stream) if given.get("boxes") is not None else None
    keyframes = _keyframes(given["keyframes"], serve, stream) if given.get("keyframes") is not None else None
    stride = _number("stride", given["stride"], 0, MAX_SECONDS) if given.get("stride") is not None else None
    start = _number("start", given["start"], 0, MAX_SECONDS) if given.get("start") is not None else None
    end = _number("end", given["end"], 0, MAX_SECONDS) if given.get("end") is not None else None
    if sum(x is not None for x in (boxes, keyframes, stride)) > 1:
        raise _bad("boxes (whose times are the keyframes), keyframes and stride exclude each other")
    if stride is not None and stride <= 0:
        raise _bad("stride must be > 0 seconds")
    if (start is not None or end is not None) and stride is None:
        raise _bad("start and end bound a stride: add stride")
    if start is not None and end is not None and end <= start:
        raise _bad(f"end ({end:g} s) must be after start ({start:g} s)")
    threshold: Optional[float] = DEFAULT_THRESHOLD
    topk = None
    if given.get("topk") is not None:
        topk = int(_number("topk", given["topk"], 1, num_classes))
        if float(given["topk"]) != topk:
            raise _bad(f"topk must be an integer, got {given['topk']!r}")
        threshold = None  # topk alone: the k most probable actions, whatever their probability
    if given.get("threshold") is not None:
        threshold = _number("threshold", given["threshold"], 0, 1)
    return PeopleOptions(boxes=boxes, keyframes=keyframes, stride=stride, start=start, end=end,
                         threshold=threshold, topk=topk, stream=stream)


def read_people_request(row: Any, headers: Mapping[str, str], serve: ServeOptions, num_classes: int) -> PeopleRequest:
    """Parse one row: one video and its options (400/413/415 before any decoding)."""
    parsed = parse_row(row, headers)
    if len(parsed.videos) != 1:
        raise _bad(f"an action detector answers one video per request, got {len(parsed.videos)}")
    options = resolve_people_options(people_fields(row, headers, parsed), serve, num_classes)
    if options.stream and parsed.protocol != PLAIN:
        raise _bad("stream applies to plain requests, not KServe envelopes")
    check_upload_size(parsed.videos, serve.max_upload_bytes)
    return PeopleRequest(parsed, options)
