"""What one request asks for: its raw option values (fields, headers or KServe parameters) read
against the option table (``option_table.REQUEST_OPTIONS``) over the deployment's defaults
(``serve_settings.ServeOptions``) into ``RequestOptions``; a bad value is a 400 naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Tuple

from handler.errors import RequestError
from handler.option_table import FALSE_WORDS, MAX_SECONDS, OUTPUTS, REQUEST_OPTIONS, TRUE_WORDS, RequestOption
from handler.serve_settings import ServeOptions


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks for (the fields are ``REQUEST_OPTIONS``, which documents them).

    ``clips`` windows spread over the video, or with ``timeline`` a window every ``stride``
    seconds (None = one window length); ``start``/``end`` limit either to a part of the video
    (seconds, None = its start/end); ``stream``: one JSON line per window as computed.
    ``threshold``: only labels whose probability is at least this; without ``topk`` given, every
    such label. ``source_offset``/``source_duration``: the upload is a cut of a longer video (the
    source) starting at that second of it; windows are planned over the source and named in its
    clock (None: the upload is the whole video).
    """

    topk: int
    clips: int
    crops: int
    output: str = "labels"
    normalize: bool = False
    timeline: bool = False
    stride: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    stream: bool = False
    threshold: Optional[float] = None
    source_offset: Optional[float] = None
    source_duration: Optional[float] = None

    @property
    def offset(self) -> float:
        """Seconds of the source at the upload's first frame (0 when the upload is the whole video)."""
        return self.source_offset or 0.0

    @property
    def kinds(self) -> Tuple[str, ...]:
        """The output kinds to render (handler/render.py), in answer order."""
        return OUTPUTS[self.output]


def _text(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    return str(raw).strip()


def _bad(message: str) -> RequestError:
    return RequestError(400, "bad_option", message)


def _read_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _bad(f"option {name} must be an integer, got {raw!r}")
    try:
        return int(_text(raw))
    except ValueError:
        raise _bad(f"option {name} must be an integer, got {_text(raw)[:40]!r}") from None


def _read_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text(raw).lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise _bad(f"option {name} must be true or false, got {text[:40]!r}")


def _read_seconds(name: str, raw: Any) -> float:
    try:
        value = float(_text(raw)) if not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_SECONDS:
        raise _bad(f"option {name} must be a number of seconds in 0..{MAX_SECONDS:g}, got {_text(raw)[:40]!r}")
    return value


def _read_choice(option: RequestOption, raw: Any) -> Any:
    value = _read_int(option.name, raw) if isinstance(option.choices[0], int) else _text(raw).lower()
    if value not in option.choices:
        words = option.choice_words or tuple(str(choice) for choice in option.choices)
        shown = value if isinstance(value, int) else repr(value[:40])
        raise _bad(f"{option.name} must be one of {', '.join(words)}, got {shown}")
    return value


def _read_float(name: str, raw: Any) -> float:
    try:
        value = float(_text(raw)) if not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _bad(f"option {name} must be a number, got {_text(raw)[:40]!r}")
    return value


def read_option(option: RequestOption, raw: Any, highs: Mapping[str, int]) -> Any:
    """``raw`` (text, bytes, or a JSON value) as ``option``'s value; 400 naming what is wrong.

    ``highs``: the limits an option's ``high`` may name (``num_classes``, ``max_clips``)."""
    if option.value_type in ("int", "float"):
        value = _read_int(option.name, raw) if option.value_type == "int" else _read_float(option.name, raw)
        high = highs[option.high] if isinstance(option.high, str) else option.high
        if not option.low <= value <= high:
            raise _bad(f"{option.name} must be in {option.low:g}..{high:g}, got {value:g}")
        return value
    if option.value_type == "bool":
        return _read_bool(option.name, raw)
    if option.value_type == "seconds":
        return _read_seconds(option.name, raw)
    if option.value_type == "choice":
        return _read_choice(option, raw)
    raise ValueError(f"option {option.name}: unknown value type {option.value_type!r}")


def resolve_request_options(
    given: Mapping[str, Any], defaults: ServeOptions, num_classes: int
) -> RequestOptions:
    """Validate the options a request gave (field, header or KServe parameter) over the defaults."""
    highs = {"num_classes": num_classes, "max_clips": defaults.max_clips}
    values = {
        option.name: read_option(option, given[option.name], highs)
        for option in REQUEST_OPTIONS if given.get(option.name) is not None
    }
    # A threshold alone selects every label at or above it; with topk, the top k of those.
    topk = num_classes if "threshold" in values and "topk" not in values else min(defaults.topk, num_classes)
    resolved = replace(RequestOptions(topk=topk, clips=defaults.clips, crops=defaults.crops), **values)
    if resolved.timeline and "clips" in values:
        raise _bad("clips and timeline exclude each other: a timeline has a window every stride seconds")
    if not resolved.timeline and resolved.stride is not None:
        raise _bad("stride applies to a timeline: add timeline=true")
    if resolved.stride is not None and resolved.stride <= 0:
        raise _bad("stride must be > 0 seconds")
    if resolved.start is not None and resolved.end is not None and resolved.end <= resolved.start:
        raise _bad(f"end ({resolved.end:g} s) must be after start ({resolved.start:g} s)")
    if (resolved.source_offset is None) != (resolved.source_duration is None):
        raise _bad("source_offset and source_duration go together: the source's second at the upload's first "
                   "frame and the source's duration")
    if resolved.source_duration is not None and resolved.offset >= resolved.source_duration:
        raise _bad(f"source_offset ({resolved.offset:g} s) must be before the source's end "
                   f"(source_duration {resolved.source_duration:g} s)")
    return resolved
