"""Handler settings (from the model config) and per-request options (from fields or headers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

from handler.errors import RequestError

PRECISIONS = ("fp32", "fp16", "bf16")
CPU_RUNTIMES = ("openvino", "torchscript")
# OpenVINO's names; auto = bf16 where the CPU computes bf16 natively, else f32.
CPU_PRECISIONS = ("auto", "f32", "bf16")
CROP_CHOICES = (1, 3)


class ConfigError(ValueError):
    """The ``handler:`` section of model-config.yaml is invalid (fails the model load, loudly)."""


@dataclass(frozen=True)
class ServeOptions:
    """Settings of one model deployment, from the ``handler:`` section of model-config.yaml.

    Request defaults: ``topk``, ``clips`` (temporal windows), ``crops`` (1 or 3 spatial crops).
    Limits, each answered with its own 4xx: ``max_upload_mb`` (all videos of one request
    together), ``max_views_per_request`` (videos x windows x crops of an answer sent in one
    piece), ``max_streamed_views_per_request`` (the same for a streamed timeline, whose every line
    restarts TorchServe's response timeout), ``max_frame_pixels`` (width x height as declared or
    decoded), ``max_decode_seconds`` (time spent decoding one request; for a streamed timeline,
    each window). ``max_aspect_ratio``: long/short side of the working frame; a more elongated
    video is answered from its central region of that aspect (with a warning).
    Compute: ``micro_batch_cpu`` / ``micro_batch_cuda`` views per forward, ``precision``
    (fp16/bf16 autocast on GPU only), ``optimize`` (freeze + optimize_for_inference at load),
    ``cpu_threads`` (0 = cores / minWorkers), ``decode_threads`` (0 = FFmpeg's choice).
    CPU runtime: ``cpu_runtime`` (openvino, falling back to torchscript if it fails, or
    torchscript), ``cpu_precision`` (OpenVINO's inference precision: auto, f32, bf16),
    ``cpu_streams`` (OpenVINO infer requests run in parallel on a micro-batch's views).
    """

    topk: int = 5
    clips: int = 1
    crops: int = 1
    max_clips: int = 10
    max_upload_mb: float = 200.0
    max_views_per_request: int = 48
    max_streamed_views_per_request: int = 2048
    max_frame_pixels: int = 8192 * 4352
    max_decode_seconds: float = 30.0
    max_aspect_ratio: float = 4.0
    micro_batch_cpu: int = 1
    micro_batch_cuda: int = 16
    precision: str = "fp32"
    optimize: bool = True
    cpu_threads: int = 0
    decode_threads: int = 0
    warmup: bool = True
    cpu_runtime: str = "openvino"
    cpu_precision: str = "auto"
    cpu_streams: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_clips <= 64:
            problems.append("max_clips must be in 1..64")
        if not 1 <= self.clips <= self.max_clips:
            problems.append(f"clips must be in 1..{self.max_clips}")
        if self.crops not in CROP_CHOICES:
            problems.append(f"crops must be one of {CROP_CHOICES}")
        if self.topk < 1:
            problems.append("topk must be >= 1")
        if min(self.max_upload_mb, self.max_frame_pixels, self.max_decode_seconds,
               self.max_views_per_request, self.max_streamed_views_per_request) <= 0:
            problems.append("limits must be positive")
        if not 1.0 <= self.max_aspect_ratio <= 64.0:
            problems.append("max_aspect_ratio must be in 1..64")
        if self.micro_batch_cpu < 1 or self.micro_batch_cuda < 1:
            problems.append("micro batch sizes must be >= 1")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if self.cpu_threads < 0 or self.decode_threads < 0:
            problems.append("thread counts must be >= 0")
        if self.cpu_runtime not in CPU_RUNTIMES:
            problems.append(f"cpu_runtime must be one of {CPU_RUNTIMES}")
        if self.cpu_precision not in CPU_PRECISIONS:
            problems.append(f"cpu_precision must be one of {CPU_PRECISIONS}")
        if not 1 <= self.cpu_streams <= 64:
            problems.append("cpu_streams must be in 1..64")
        if problems:
            raise ConfigError("model-config handler section: " + "; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_config(cls, section: Optional[Mapping[str, Any]]) -> "ServeOptions":
        """Build from the yaml mapping. Unknown keys and values of the wrong type are errors, so a
        typo (``optimize: ture``, ``topk: 5.7``) fails the model load instead of passing silently."""
        section = dict(section or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ConfigError(f"model-config handler section: unknown keys {unknown}; known: {sorted(known)}")
        values = {name: _config_value(name, value, type(known[name].default)) for name, value in section.items()}
        return cls(**values)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _config_value(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (bool, int, float or str), accepting only exact spellings of it."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"model-config handler section: {name}: {value!r} is not {expected}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise bad("a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise bad("an integer") from None
    if kind is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if isinstance(value, (dict, list)):
        raise bad("a string")
    return str(value).strip()


OUTPUTS = ("labels", "embedding", "both")
# Seconds: a stride or span outside this is a typo, not a request.
MAX_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks for.

    ``topk`` labels; ``clips`` windows spread over the video, or with ``timeline`` a window every
    ``stride`` seconds (None = one window length); ``start``/``end`` limit either to a part of the
    video (seconds, None = its start/end); ``crops`` per window; ``output`` labels, embedding or
    both (``normalize``: L2-normalised embedding); ``stream``: one JSON line per window as computed.
    ``threshold``: only labels whose probability is at least this (0..1); without ``topk`` given,
    every such label.
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

    @property
    def wants_labels(self) -> bool:
        return self.output in ("labels", "both")

    @property
    def wants_embedding(self) -> bool:
        return self.output in ("embedding", "both")


REQUEST_OPTION_NAMES = (
    "topk", "clips", "crops", "output", "normalize", "timeline", "stride", "start", "end", "stream", "threshold",
)


def _text(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    return str(raw).strip()


def _read_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise RequestError(400, "bad_option", f"option {name} must be an integer, got {raw!r}")
    try:
        return int(_text(raw))
    except ValueError:
        raise RequestError(400, "bad_option", f"option {name} must be an integer, got {_text(raw)[:40]!r}") from None


def _read_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text(raw).lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise RequestError(400, "bad_option", f"option {name} must be true or false, got {text[:40]!r}")


def _read_seconds(name: str, raw: Any) -> float:
    try:
        value = float(_text(raw)) if not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_SECONDS:
        raise RequestError(
            400, "bad_option", f"option {name} must be a number of seconds in 0..{MAX_SECONDS:g}, got {_text(raw)[:40]!r}"
        )
    return value


def _read_probability(name: str, raw: Any) -> float:
    try:
        value = float(_text(raw)) if not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise RequestError(400, "bad_option", f"option {name} must be a probability in 0..1, got {_text(raw)[:40]!r}")
    return value


_READERS = {
    "topk": _read_int, "clips": _read_int, "crops": _read_int,
    "normalize": _read_bool, "timeline": _read_bool, "stream": _read_bool,
    "stride": _read_seconds, "start": _read_seconds, "end": _read_seconds,
    "output": lambda name, raw: _text(raw).lower(),
    "threshold": _read_probability,
}


def resolve_request_options(
    given: Mapping[str, Any], defaults: ServeOptions, num_classes: int
) -> RequestOptions:
    """Validate the options a request gave (field, header or KServe parameter) over the defaults."""
    values = {name: _READERS[name](name, given[name]) for name in REQUEST_OPTION_NAMES if given.get(name) is not None}
    # A threshold alone selects every label at or above it; with topk, the top k of those.
    topk = num_classes if "threshold" in values and "topk" not in values else min(defaults.topk, num_classes)
    resolved = replace(RequestOptions(topk=topk, clips=defaults.clips, crops=defaults.crops), **values)
    if not 1 <= resolved.topk <= num_classes:
        raise RequestError(400, "bad_option", f"topk must be in 1..{num_classes}, got {resolved.topk}")
    if not 1 <= resolved.clips <= defaults.max_clips:
        raise RequestError(400, "bad_option", f"clips must be in 1..{defaults.max_clips}, got {resolved.clips}")
    if resolved.crops not in CROP_CHOICES:
        raise RequestError(400, "bad_option", f"crops must be 1 (center) or 3 (left/center/right), got {resolved.crops}")
    if resolved.output not in OUTPUTS:
        raise RequestError(400, "bad_option", f"output must be one of {', '.join(OUTPUTS)}, got {resolved.output[:40]!r}")
    if resolved.timeline and "clips" in values:
        raise RequestError(400, "bad_option", "clips and timeline exclude each other: a timeline has a window every stride seconds")
    if not resolved.timeline and resolved.stride is not None:
        raise RequestError(400, "bad_option", "stride applies to a timeline: add timeline=true")
    if resolved.stride is not None and resolved.stride <= 0:
        raise RequestError(400, "bad_option", "stride must be > 0 seconds")
    if resolved.start is not None and resolved.end is not None and resolved.end <= resolved.start:
        raise RequestError(400, "bad_option", f"end ({resolved.end:g} s) must be after start ({resolved.start:g} s)")
    return resolved
