"""A stand-in for TorchServe's ``ts.context.Context``: what the handler reads and writes of it.

Tests and the benchmark drive ``SlowFastHandler`` in-process with it (no Java server), exactly
as a worker would: ``initialize(context)`` then ``handle(rows, context)`` per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple


class NullMetric:
    def add_or_update(self, *args: Any, **kwargs: Any) -> None:
        pass


class NullMetricsCache:
    """Accepts the handler's metric registrations and updates and keeps nothing."""

    def add_metric_to_cache(self, *args: Any, **kwargs: Any) -> NullMetric:
        return NullMetric()


def _only_model_file(model_dir: Path) -> str:
    """The one .pt in ``model_dir``; else the file `make mar` names for config.properties' model."""
    found = sorted(p.name for p in model_dir.glob("*.pt"))
    if len(found) > 1:
        raise FileNotFoundError(f"{model_dir} holds {len(found)} .pt files ({found[:5]}): name one with serialized=")
    if found:
        return found[0]
    from client.endpoint import default_model

    return f"{default_model()}.pt"


def record_line(index: int, line: str, context: "FakeContext") -> None:
    """The handler's line sender in-process (``SlowFastHandler(send_line=record_line)``): a
    streamed timeline's line kept in ``context.streamed[index]`` instead of sent to a frontend."""
    context.streamed.setdefault(index, []).append(line)


class FakeContext:
    """Properties, manifest, model config, per-request headers and statuses, streamed replies.

    ``statuses[idx]`` is ``(code, phrase)`` for each request the handler gave a status;
    ``streamed[idx]`` lists the timeline lines sent for request ``idx`` (by ``record_line``).
    """

    def __init__(
        self,
        model_dir: Path,
        batch_size: int = 1,
        config: Optional[Mapping[str, Any]] = None,
        gpu_id: Optional[int] = None,
        serialized: Optional[str] = None,
        metrics: Any = None,
    ) -> None:
        # The one .pt in model_dir unless named; the model is named after it, as `make mar` does.
        serialized = serialized or _only_model_file(Path(model_dir))
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self.manifest = {"model": {"modelName": Path(serialized).stem, "serializedFile": serialized}}
        self.model_yaml_config = dict(config) if config is not None else {"minWorkers": 1, "handler": {"warmup": False}}
        self.metrics = metrics
        self.statuses: Dict[int, Tuple[int, str]] = {}
        self.headers: Dict[int, Dict[str, str]] = {}
        self.request_ids = {i: f"req-{i}" for i in range(batch_size)}
        self.streamed: Dict[int, List[Any]] = {}

    def start_batch(self, headers: List[Mapping[str, str]]) -> None:
        """Reset per-batch state for a batch whose requests carry ``headers``."""
        self.headers = {i: dict(h) for i, h in enumerate(headers)}
        self.request_ids = {i: f"req-{i}" for i in range(max(1, len(headers)))}
        self.statuses = {}
        self.streamed = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def get_all_request_header(self, idx: int) -> Dict[str, str]:
        return self.headers.get(idx, {})

    def get_request_header(self, idx: int, key: str) -> Optional[str]:
        return self.headers.get(idx, {}).get(key)
