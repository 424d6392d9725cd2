"""The packed person detector: torchvision's COCO Faster R-CNN (scripted) on a keyframe's frame.

It sees the keyframe's working frame (upright, short side the contract's; its own transform
scales that to 800 pixels) and keeps the boxes of the contract's person class scoring at or above
the contract's threshold (the hub tutorial's 0.75), most confident first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch
import torchvision  # noqa: F401  (registers torchvision::nms and roi_align, which the scripted detector calls)

from handler.contract import PersonDetector

log = logging.getLogger(__name__)


@dataclass
class PersonFinder:
    """``find(frame)``: (H, W, 3) uint8 upright frame -> (boxes (N, 4) float32 in its pixels, scores (N,))."""

    module: torch.jit.ScriptModule
    detector: PersonDetector

    @classmethod
    def load(cls, model_dir: Path, detector: PersonDetector) -> "PersonFinder":
        module = torch.jit.load(str(model_dir / detector.file), map_location="cpu").eval()
        log.info("person detector %s loaded (weights: %s, threshold %g)", detector.architecture, detector.weights,
                 detector.score_threshold)
        return cls(module, detector)

    def find(self, frame: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image = frame.permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            _, found = self.module([image])
        answer = found[0]
        keep = (answer["labels"] == self.detector.label_index) & (answer["scores"] >= self.detector.score_threshold)
        boxes, scores = answer["boxes"][keep].float(), answer["scores"][keep].float()
        order = scores.argsort(descending=True)
        return boxes[order], scores[order]
