"""Per-request options (from fields, headers or KServe parameters) and the deployment's settings.

``REQUEST_OPTIONS`` declares each request option once; ``resolve_request_options`` reads a
request's raw values into ``RequestOptions``. ``ServeOptions`` holds the ``handler:`` section of
model-config.yaml: request defaults, limits and compute settings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional, Tuple, Union

from handler.errors import RequestError

log = logging.getLogger(__name__)

# One word per precision across settings and runtime names (OpenVINO's own "f32" is mapped at
# its call, handler/runtime_openvino.py).
PRECISIONS = ("fp32", "fp16", "bf16")
CPU_RUNTIMES = ("openvino", "torchscript")
# auto = bf16 where the CPU computes bf16 natively, else fp32.
CPU_PRECISIONS = ("auto", "fp32", "bf16", "int8")
# Old spellings a config may still use: setting -> {old value: new value}; each logs a warning.
_CONFIG_ALIASES: Mapping[str, Mapping[str, str]] = {"cpu_precision": {"f32": "fp32"}}


# -- the request options, declared once ------------------------------------------------------

# Seconds: a stride or span outside this is a typo, not a request.
MAX_SECONDS = 24 * 3600.0
DEFAULT_TOPK = 5
# Each ``output`` a request may ask for, and the output kinds (handler/render.py) it renders.
OUTPUTS: Mapping[str, Tuple[str, ...]] = {
    "labels": ("labels",),
    "embedding": ("embedding",),
    "both": ("labels", "embedding"),
    "logits": ("logits",),
}


@dataclass(frozen=True)
class RequestOption:
    """One request option, declared once: the handler's reader and header names, the client's flag
    and the README's option table all come from this.

    ``value_type``: ``int`` or ``float`` (in ``low``..``high``), ``bool``, ``seconds`` (a float in
    0..MAX_SECONDS) or ``choice`` (one of ``choices``, read as the type of the first).
    ``default``: the value when a request does not say (None: unset, meaning ``unset``); with
    ``configurable`` the deployment's ``handler:`` section (``ServeOptions``) may change it.
    ``high``: a number, or the name of the limit that bounds the option (``num_classes`` from the
    model, ``max_clips`` from ``ServeOptions``). ``client_default``: what the client sends when its
    user does not say (None: nothing). ``client``: the client has a flag.
    """

    name: str
    value_type: str
    help: str
    default: Any = None
    configurable: bool = False
    choices: Tuple[Any, ...] = ()
    choice_words: Tuple[str, ...] = ()
    low: float = 1
    high: Union[float, str] = ""
    unset: str = ""
    client_default: Any = None
    client: bool = True

    @property
    def headers(self) -> Tuple[str, str]:
        """Header names carrying it (lower case): ``topk`` or ``x-topk``."""
        return self.name, f"x-{self.name}"


REQUEST_OPTIONS: Tuple[RequestOption, ...] = (
    RequestOption("topk", "int", "labels per answer", default=DEFAULT_TOPK, configurable=True, high="num_classes",
                  client_default=DEFAULT_TOPK),
    RequestOption("clips", "int", "temporal windows to average", default=1, configurable=True, high="max_clips"),
    RequestOption("crops", "choice", "spatial crops per window", default=1, configurable=True, choices=(1, 3),
                  choice_words=("1 (center)", "3 (left/center/right)")),
    RequestOption("output", "choice", f"what the answer holds: {', '.join(OUTPUTS)}",
                  default="labels", choices=tuple(OUTPUTS)),
    RequestOption("normalize", "bool", "L2-normalise the embedding", default=False),
    RequestOption("timeline", "bool", "a window every stride seconds, each with its own answer", default=False),
    RequestOption("stride", "seconds", "timeline step in seconds", unset="one window length"),
    RequestOption("start", "seconds", "look from this second on", unset="the video's start"),
    RequestOption("end", "seconds", "look up to this second", unset="the video's end"),
    RequestOption("stream", "bool", "send a timeline as JSON lines, one per window as computed", default=False,
                  client=False),
    RequestOption("threshold", "float", "only labels whose probability is at least this (alone: every such label, "
                  "with topk: the top k of them); for multi-label (sigmoid) models or as a cut-off", low=0, high=1,
                  unset="none"),
)
REQUEST_OPTION_NAMES = tuple(option.name for option in REQUEST_OPTIONS)



def request_option(name: str) -> RequestOption:
    return next(option for option in REQUEST_OPTIONS if option.name == name)


# -- the deployment's settings --------------------------------------------------------------


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
    decoded), ``max_decode_seconds`` (time spent decoding one request; for a streamed timeline
    where streaming allows more views than an answer, each window). ``max_aspect_ratio``: long/short side of the working frame; a more elongated
    video is answered from its central region of that aspect (with a warning).
    Compute: ``micro_batch_cpu`` / ``micro_batch_cuda`` views per forward, ``precision``
    (fp16/bf16 autocast on GPU only), ``optimize`` (freeze + optimize_for_inference at load),
    ``cpu_threads`` (0 = cores / minWorkers), ``decode_threads`` (0 = FFmpeg's choice).
    CPU runtime: ``cpu_runtime`` (openvino, falling back to torchscript if it fails, or
    torchscript), ``cpu_precision`` (OpenVINO's inference precision: auto, fp32, bf16, int8; auto serves
    the int8 model where the model file carries one, ``make mar PRECISION=int8``),
    ``cpu_streams`` (OpenVINO infer requests run in parallel on a micro-batch's views).
    Registrations: ``timeline_model`` names the registration a 413 for a timeline over this one's
    budget points to (empty: none); ``cpu_nice`` (0..19) lowers this worker's CPU priority, so a
    registration for long work yields the cores to the main registration (handler/priority.py).
    Action detectors (handler/people): ``max_persons_per_keyframe`` (boxes given or found, each
    a RoI of the forward), ``max_keyframes_per_request`` (a forward each).
    """

    topk: int = request_option("topk").default
    clips: int = request_option("clips").default
    crops: int = request_option("crops").default
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
    timeline_model: str = ""
    cpu_nice: int = 0
    max_persons_per_keyframe: int = 32
    max_keyframes_per_request: int = 16

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_clips <= 64:
            problems.append("max_clips must be in 1..64")
        if not 1 <= self.clips <= self.max_clips:
            problems.append(f"clips must be in 1..{self.max_clips}")
        if self.crops not in request_option("crops").choices:
            problems.append(f"crops must be one of {request_option('crops').choices}")
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
        if min(self.max_persons_per_keyframe, self.max_keyframes_per_request) < 1:
            problems.append("max_persons_per_keyframe and max_keyframes_per_request must be >= 1")
        if not 0 <= self.cpu_nice <= 19:
            problems.append("cpu_nice must be in 0..19")
        if problems:
            raise ConfigError("model-config handler section: " + "; ".join(problems))

    @property
    def streaming_extends_budget(self) -> bool:
        """Whether a streamed timeline may cost more than an answer sent in one piece (then its
        decoding budget is per window): true on the timeline registration, false on the main one."""
        return self.max_streamed_views_per_request > self.max_views_per_request

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
        for name, aliases in _CONFIG_ALIASES.items():
            if values.get(name) in aliases:
                old, values[name] = values[name], aliases[values[name]]
                log.warning("model-config handler section: %s: %s is the old spelling; write %s", name, old, values[name])
        return cls(**values)


def registration_settings(
    config: Mapping[str, Any], registered_name: str, archive_name: str = ""
) -> Mapping[str, Any]:
    """The ``handler:`` settings of the archive as registered under ``registered_name``: the
    ``registrations.<name>:`` entries of model-config.yaml over ``handler:`` (one .mar, several
    registrations in config.properties load_models, each with its own workers and settings).

    ``{model}`` in a registration's name or in a string setting stands for ``archive_name`` (the
    .mar's model name), so one model-config serves every variant and fine-tuned model."""
    registrations = config.get("registrations") or {}
    if not isinstance(registrations, Mapping):
        raise ConfigError("model-config registrations: must map registered names to handler settings")
    named = {str(key).replace("{model}", archive_name): value for key, value in registrations.items()}
    overrides = named.get(registered_name) or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"model-config registrations.{registered_name}: must be a mapping of handler settings")
    merged = {**(config.get("handler") or {}), **overrides}
    return {key: value.replace("{model}", archive_name) if isinstance(value, str) else value
            for key, value in merged.items()}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _config_value(name: str, value: Any, value_type: type) -> Any:
    """``value`` as ``value_type`` (bool, int, float or str), accepting only exact spellings of it."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"model-config handler section: {name}: {value!r} is not {expected}")

    if value_type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise bad("a boolean (true/false)")
    if value_type is int:
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
    if value_type is float:
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


# -- what one request asks for -----------------------------------------------------------------

@dataclass(frozen=True)
class RequestOptions:
    """What one request asks for (the fields are ``REQUEST_OPTIONS``, which documents them).

    ``clips`` windows spread over the video, or with ``timeline`` a window every ``stride``
    seconds (None = one window length); ``start``/``end`` limit either to a part of the video
    (seconds, None = its start/end); ``stream``: one JSON line per window as computed.
    ``threshold``: only labels whose probability is at least this; without ``topk`` given, every
    such label.
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
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
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
    return resolved
