"""Handler metrics, reported through TorchServe's metrics cache (Prometheus on the metrics API)."""

from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

try:
    from ts.metrics.metric_type_enum import MetricTypes
except ImportError:  # unit tests without TorchServe installed
    MetricTypes = None  # type: ignore[assignment]


class HandlerMetrics:
    """Named metrics of this handler; every call is a no-op where the context has no metrics cache.

    - ``SlowFastDecodeMs`` (gauge, ms): decode time of the last request.
    - ``SlowFastFramesDecoded`` (counter): frames decoded, all requests.
    - ``SlowFastViews`` (counter): window x crop views run through the model.
    - ``SlowFastVideoSeconds`` (counter, s): seconds of uploaded video classified.
    - ``SlowFastRequests`` (counter): requests answered, by ``Status`` (ok / 4xx code).
    - ``SlowFastRejected`` (counter): requests refused, by ``Reason``.
    """

    def __init__(self, context: Any) -> None:
        self._model = "unknown"  # set_model_name gives the contract's name
        self._decode = self._frames = self._views = self._seconds = self._requests = self._rejected = None
        cache = getattr(context, "metrics", None)
        self._ok = cache is not None and MetricTypes is not None and hasattr(cache, "add_metric_to_cache")
        if not self._ok:
            return
        try:
            add = cache.add_metric_to_cache
            self._decode = add("SlowFastDecodeMs", "ms", ["ModelName"], MetricTypes.GAUGE)
            self._frames = add("SlowFastFramesDecoded", "count", ["ModelName"], MetricTypes.COUNTER)
            self._views = add("SlowFastViews", "count", ["ModelName"], MetricTypes.COUNTER)
            self._seconds = add("SlowFastVideoSeconds", "s", ["ModelName"], MetricTypes.COUNTER)
            self._requests = add("SlowFastRequests", "count", ["ModelName", "Status"], MetricTypes.COUNTER)
            self._rejected = add("SlowFastRejected", "count", ["ModelName", "Reason"], MetricTypes.COUNTER)
        except Exception:  # metrics must never take the model down
            log.exception("could not register handler metrics; continuing without them")
            self._ok = False

    def set_model_name(self, name: str) -> None:
        self._model = name

    def _emit(self, metric: Any, value: float, *dims: str) -> None:
        if not self._ok or metric is None:
            return
        try:
            metric.add_or_update(value, [self._model, *dims])
        except Exception:
            log.debug("metric update failed", exc_info=True)

    def decoded(self, milliseconds: float, frames: int, video_seconds: float) -> None:
        self._emit(self._decode, milliseconds)
        self._emit(self._frames, frames)
        self._emit(self._seconds, video_seconds)

    def answered(self, views: int) -> None:
        self._emit(self._views, views)
        self._emit(self._requests, 1, "ok")

    def rejected(self, reason: str, status: int, note: Optional[str] = None) -> None:
        self._emit(self._rejected, 1, reason)
        self._emit(self._requests, 1, str(status))
