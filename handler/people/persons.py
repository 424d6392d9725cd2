"""The packed person detector: torchvision's COCO Faster R-CNN (scripted) on a keyframe's frame.

It sees the keyframe's frame at the video's own resolution, as the hub tutorial's detector sees
the original keyframe, bounded by the detector's own transform: that resizes every image so its
short side is ``min_size`` (800) with the long side at most ``max_size`` (1333), so a larger frame
is decoded at that size (``frame_short_side``), never above it, and a smaller one at its own
(the transform upscales it, as it would the tutorial's). It keeps the boxes of the contract's
person class scoring at or above the contract's threshold (the tutorial's 0.75), most confident first.
"""

from __future__ import annotations

import inspect
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
    min_size: int
    max_size: int

    @classmethod
    def load(cls, model_dir: Path, detector: PersonDetector) -> "PersonFinder":
        module = torch.jit.load(str(model_dir / detector.file), map_location="cpu").eval()
        min_size, max_size = transform_sizes(module)
        log.info("person detector %s loaded (weights: %s, threshold %g, frames up to short side %d, long side %d)",
                 detector.architecture, detector.weights, detector.score_threshold, min_size, max_size)
        return cls(module, detector, min_size, max_size)

    def frame_short_side(self, width: int, height: int) -> int:
        """The short side to decode a ``width`` x ``height`` picture at for the detector: its own, or
        less where the detector's transform would shrink it (short side ``min_size``, long side at
        most ``max_size``: torchvision's ``GeneralizedRCNNTransform`` scale)."""
        short, long = min(width, height), max(width, height)
        scale = min(1.0, self.min_size / short, self.max_size / long)
        return max(1, int(short * scale))

    def find(self, frame: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image = frame.permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            _, found = self.module([image])
        answer = found[0]
        keep = (answer["labels"] == self.detector.label_index) & (answer["scores"] >= self.detector.score_threshold)
        boxes, scores = answer["boxes"][keep].float(), answer["scores"][keep].float()
        order = scores.argsort(descending=True)
        return boxes[order], scores[order]


def transform_sizes(module: torch.nn.Module) -> Tuple[int, int]:
    """(min_size, max_size) of a torchvision detector's transform (the size it resizes images to
    when evaluating); torchvision's ``FasterRCNN`` defaults for a module without one (test stand-ins)."""
    transform = getattr(module, "transform", None)
    if transform is not None and hasattr(transform, "min_size"):
        return int(transform.min_size[-1]), int(transform.max_size)
    defaults = inspect.signature(torchvision.models.detection.FasterRCNN.__init__).parameters
    return int(defaults["min_size"].default), int(defaults["max_size"].default)
