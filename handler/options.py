"""Handler settings (from the model config) and per-request options (from fields or headers)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

from handler.errors import RequestError

PRECISIONS = ("fp32", "fp16", "bf16")
CROP_CHOICES = (1, 3)


class ConfigError(ValueError):
    """The ``handler:`` section of model-config.yaml is invalid (fails the model load, loudly)."""


@dataclass(frozen=True)
class ServeOptions:
    """Settings of one model deployment, from the ``handler:`` section of model-config.yaml.

    Request defaults: ``topk``, ``clips`` (temporal windows), ``crops`` (1 or 3 spatial crops).
    Limits, each answered with its own 4xx: ``max_upload_mb``, ``max_frame_pixels`` (width x
    height as declared or decoded), ``max_decode_seconds`` (wall time to decode all videos of one
    request). ``max_aspect_ratio``: long/short side of the working frame; a more elongated video
    is answered from its central region of that aspect (with a warning).
    Compute: ``micro_batch_cpu`` / ``micro_batch_cuda`` views per forward, ``precision``
    (fp16/bf16 autocast on GPU only), ``optimize`` (freeze + optimize_for_inference at load),
    ``cpu_threads`` (0 = cores / minWorkers), ``decode_threads`` (0 = FFmpeg's choice).
    """

    topk: int = 5
    clips: int = 1
    crops: int = 1
    max_clips: int = 10
    max_upload_mb: float = 200.0
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
        if self.max_upload_mb <= 0 or self.max_frame_pixels <= 0 or self.max_decode_seconds <= 0:
            problems.append("limits must be positive")
        if not 1.0 <= self.max_aspect_ratio <= 64.0:
            problems.append("max_aspect_ratio must be in 1..64")
        if self.micro_batch_cpu < 1 or self.micro_batch_cuda < 1:
            problems.append("micro batch sizes must be >= 1")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if self.cpu_threads < 0 or self.decode_threads < 0:
            problems.append("thread counts must be >= 0")
        if problems:
            raise ConfigError("model-config handler section: " + "; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_config(cls, section: Optional[Mapping[str, Any]]) -> "ServeOptions":
        """Build from the yaml mapping; unknown keys are errors so typos don't pass silently."""
        section = dict(section or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ConfigError(f"model-config handler section: unknown keys {unknown}; known: {sorted(known)}")
        values = {}
        for name, value in section.items():
            kind = type(getattr(cls, name)) if hasattr(cls, name) else type(known[name].default)
            try:
                if kind is bool:
                    values[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                else:
                    values[name] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model-config handler section: {name}={value!r}: {exc}") from exc
        return cls(**values)


@dataclass(frozen=True)
class RequestOptions:
    """Options of one request: ``topk`` labels, ``clips`` windows, ``crops`` crops per window."""

    topk: int
    clips: int
    crops: int


REQUEST_OPTION_NAMES = ("topk", "clips", "crops")


def _read_int(name: str, raw: Any) -> int:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    if isinstance(raw, bool):
        raise RequestError(400, "bad_option", f"option {name} must be an integer, got {raw!r}")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise RequestError(400, "bad_option", f"option {name} must be an integer, got {str(raw)[:40]!r}") from None


def resolve_request_options(
    given: Mapping[str, Any], defaults: ServeOptions, num_classes: int
) -> RequestOptions:
    """Validate the options a request gave (field, header or KServe parameter) over the defaults."""
    resolved = RequestOptions(topk=min(defaults.topk, num_classes), clips=defaults.clips, crops=defaults.crops)
    for name in REQUEST_OPTION_NAMES:
        if given.get(name) is not None:
            resolved = replace(resolved, **{name: _read_int(name, given[name])})
    if not 1 <= resolved.topk <= num_classes:
        raise RequestError(400, "bad_option", f"topk must be in 1..{num_classes}, got {resolved.topk}")
    if not 1 <= resolved.clips <= defaults.max_clips:
        raise RequestError(400, "bad_option", f"clips must be in 1..{defaults.max_clips}, got {resolved.clips}")
    if resolved.crops not in CROP_CHOICES:
        raise RequestError(400, "bad_option", f"crops must be 1 (center) or 3 (left/center/right), got {resolved.crops}")
    return resolved
