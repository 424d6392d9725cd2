"""The action detector on the worker: the exported TorchScript file and its contract.

``infer([slow, fast], boxes)`` -> (logits (N, classes), probabilities (N, classes)), float32 on
CPU; the contract's activation (sigmoid) applied in float32, as for the classifier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import torch
import torchvision  # noqa: F401  (registers torchvision::roi_align, which the scripted RoI head calls)

from handler.contract import DETECTION, ContractError, PreprocessContract, activate
from handler.runtime_base import EMBEDDING_METHOD, read_model
from handler.serve_settings import ServeOptions

log = logging.getLogger(__name__)


@dataclass
class ActionDetector:
    module: torch.jit.ScriptModule
    contract: PreprocessContract
    name: str = "torchscript-fp32"

    @classmethod
    def load(cls, path: Path, options: ServeOptions) -> "ActionDetector":
        """The scripted detector, frozen for this CPU (``options.optimize``), warmed up (``options.warmup``).

        CPU workers run TorchScript: OpenVINO is not wired in for the action detector yet (README)."""
        module, contract = read_model(path, torch.device("cpu"))
        if contract.task != DETECTION:
            raise ContractError(f"{path.name} is a {contract.task} model, not an action detector")
        if options.cpu_runtime == "openvino":
            log.warning("cpu_runtime openvino: the action detector runs TorchScript (OpenVINO is not wired in for it yet)")
        if options.optimize:
            module = torch.jit.freeze(module, preserved_attrs=[EMBEDDING_METHOD])
        detector = cls(module, contract)
        if options.warmup:
            started = time.monotonic()
            side = contract.short_side
            fast = torch.zeros(1, 3, contract.num_frames, side, side)
            detector.infer([fast[:, :, :: contract.alpha], fast], torch.tensor([[0.0, 0.0, 0.0, side - 1.0, side - 1.0]]))
            log.info("warm-up forward (%s) took %.2f s", detector.name, time.monotonic() - started)
        return detector

    def infer(self, pathways: List[torch.Tensor], boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]`` float32 and (N, 5) boxes ``(view index, x1, y1, x2, y2)``
        -> (logits (N, classes), probabilities (N, classes)) float32."""
        with torch.inference_mode():
            logits = self.module.forward_with_embedding(pathways, boxes)[0].float()
        return logits, activate(logits, self.contract.activation)
