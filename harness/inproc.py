"""The real handler, loaded in this process as a TorchServe worker would load it.

``handle`` goes through ``SlowFastHandler.handle`` exactly as a worker does (parse, decode,
sample, preprocess, forward, answer), so the per-stage figures are the handler's own
``timings_ms``. The model is the same .pt, loaded by the runtime a worker would choose.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
import yaml

from harness.context import FakeContext, NullMetricsCache, record_line
from harness.paths import MODEL_CONFIG, PT


class InProcessHandler:
    """``gpu_id``: the GPU TorchServe would give the worker (None: a CPU worker); ``handler``:
    settings laid over model-config.yaml's ``handler:`` section (e.g. ``{"cpu_runtime": "torchscript"}``).
    An action detector's file loads its ``people`` service (``handle`` answers its requests); the
    classifier's ``runtime`` and inputs are a classifier's only."""

    def __init__(self, pt: Path = PT, config_path: Path = MODEL_CONFIG, gpu_id: Optional[int] = None,
                 handler: Optional[Mapping[str, Any]] = None) -> None:
        from handler.slowfast_handler import SlowFastHandler

        config = yaml.safe_load(config_path.read_text()) or {}
        config["handler"] = {**config.get("handler", {}), **(handler or {})}
        self.context = FakeContext(pt.parent, 1, config, gpu_id=gpu_id, serialized=pt.name, metrics=NullMetricsCache())
        self.handler = SlowFastHandler(send_line=record_line)
        started = time.perf_counter()
        self.handler.initialize(self.context)
        self.load_s = time.perf_counter() - started
        self.contract = self.handler.contract
        self.last_inputs: List[List[torch.Tensor]] = []
        self._capture = False
        # An action detector has its own request path and models (handler/people), no classifier runtime.
        self.people = self.handler.people
        if self.people is not None:
            return
        self.runtime = self.handler.runtime
        forward = self.runtime.infer

        def recording(pathways: list) -> Any:  # the runtime's Outputs
            if self._capture:
                self.last_inputs.append([p.detach().clone() for p in pathways])
            return forward(pathways)

        # The handler looks the method up per batch: record what it feeds the model when asked.
        self.runtime.infer = recording  # type: ignore[method-assign]

    def handle(self, video: bytes, headers: Optional[Mapping[str, str]] = None, capture: bool = False) -> Dict[str, Any]:
        """One request; returns the response body (raises if the handler rejected it).

        With ``capture``, ``last_inputs`` holds the ``[slow, fast]`` inputs the handler built.
        """
        self.context.start_batch([dict(headers or {})])
        self.last_inputs = []
        self._capture = capture
        try:
            response = self.handler.handle([{"body": bytearray(video)}], self.context)[0]
        finally:
            self._capture = False
        status = self.context.statuses.get(0, (200, ""))[0]
        if status != 200:
            raise RuntimeError(f"handler answered {status}: {response}")
        return response

    def dummy_pathways(self, batch: int = 1) -> List[torch.Tensor]:
        """A random ``[slow, fast]`` input of ``batch`` views, the shapes the handler feeds the model,
        float32 on the worker's device."""
        c = self.contract
        fast = torch.randn(batch, 3, c.num_frames, c.crop_size, c.crop_size)
        slow_index = torch.linspace(0, c.num_frames - 1, c.num_frames // c.alpha).long()
        return [p.to(self.handler.device) for p in (fast.index_select(2, slow_index).contiguous(), fast)]

    def forward_ms(self, pathways: List[torch.Tensor]) -> float:
        """One forward of the worker's runtime (with the softmax), ms: the model-only floor."""
        started = time.perf_counter()
        self.runtime.infer(pathways)
        return (time.perf_counter() - started) * 1000

