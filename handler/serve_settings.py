"""The deployment's settings: the ``handler:`` section of model-config.yaml as ``ServeOptions``
(request defaults, limits, compute), and ``registration_settings`` for one registered name.

Invalid settings fail the model load loudly (``ConfigError``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from handler.option_table import FALSE_WORDS, TRUE_WORDS, request_option

log = logging.getLogger(__name__)

# One word per precision across settings and runtime names (OpenVINO's own "f32" is mapped at
# its call, handler/runtime_openvino.py).
PRECISIONS = ("fp32", "fp16", "bf16")
CPU_RUNTIMES = ("openvino", "torchscript")
# auto = bf16 where the CPU computes bf16 natively, else fp32.
CPU_PRECISIONS = ("auto", "fp32", "bf16", "int8")
# Each window decoded ahead holds its frames ((T, H, W, 3) uint8 at the working size, ~11 MB for
# 32 frames at 256x455): a few are enough to keep the forwards fed.
MAX_PREFETCH_WINDOWS = 8
# Old spellings a config may still use: setting -> {old value: new value}; each logs a warning.
_CONFIG_ALIASES: Mapping[str, Mapping[str, str]] = {"cpu_precision": {"f32": "fp32"}}


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
    ``cpu_threads`` (0 = cores / minWorkers), ``decode_threads`` (0 = FFmpeg's choice),
    ``prefetch_windows`` (windows decoded ahead, in a thread, while the forwards run; 0 = each
    window is decoded when the run needs it, between forwards; handler/prefetch.py).
    CPU runtime: ``cpu_runtime`` (openvino, falling back to torchscript if it fails, or
    torchscript), ``cpu_precision`` (OpenVINO's inference precision: auto, fp32, bf16, int8; auto serves
    the int8 model where the model file carries one, ``make mar PRECISION=int8``),
    ``cpu_streams`` (OpenVINO infer requests run in parallel on a micro-batch's views).
    Registrations: ``timeline_model`` names the registration a 413 for a timeline over this one's
    budget points to (empty: none); ``cpu_nice`` (0..19) lowers this worker's CPU priority, so a
    registration for long work yields the cores to the main registration (handler/priority.py).
    Action detectors (handler/people): ``max_persons_per_keyframe`` (boxes given or found, each
    a RoI of the forward), ``max_keyframes_per_request`` (a forward each),
    ``max_streamed_keyframes_per_request`` (the same for a streamed answer, a line per keyframe;
    above ``max_keyframes_per_request`` the decoding budget is per keyframe, as for timelines).
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
    prefetch_windows: int = 0
    warmup: bool = True
    cpu_runtime: str = "openvino"
    cpu_precision: str = "auto"
    cpu_streams: int = 1
    timeline_model: str = ""
    cpu_nice: int = 0
    max_persons_per_keyframe: int = 32
    max_keyframes_per_request: int = 16
    max_streamed_keyframes_per_request: int = 512

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
        if not 0 <= self.prefetch_windows <= MAX_PREFETCH_WINDOWS:
            problems.append(f"prefetch_windows must be in 0..{MAX_PREFETCH_WINDOWS}")
        if self.cpu_runtime not in CPU_RUNTIMES:
            problems.append(f"cpu_runtime must be one of {CPU_RUNTIMES}")
        if self.cpu_precision not in CPU_PRECISIONS:
            problems.append(f"cpu_precision must be one of {CPU_PRECISIONS}")
        if not 1 <= self.cpu_streams <= 64:
            problems.append("cpu_streams must be in 1..64")
        if min(self.max_persons_per_keyframe, self.max_keyframes_per_request, self.max_streamed_keyframes_per_request) < 1:
            problems.append("max_persons_per_keyframe, max_keyframes_per_request and max_streamed_keyframes_per_request "
                            "must be >= 1")
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


def _config_value(name: str, value: Any, value_type: type) -> Any:
    """``value`` as ``value_type`` (bool, int, float or str), accepting only exact spellings of it."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"model-config handler section: {name}: {value!r} is not {expected}")

    if value_type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS or text in FALSE_WORDS:
            return text in TRUE_WORDS
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
