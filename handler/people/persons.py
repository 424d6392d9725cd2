"""The packed person detector: torchvision's COCO Faster R-CNN (scripted) on a keyframe's frame.

It sees the keyframe's frame at the video's own resolution, as the hub tutorial's detector sees
the original keyframe, bounded by the detector's own transform: that resizes every image so its
short side is ``min_size`` (800) with the long side at most ``max_size`` (1333), so a larger frame
is decoded at that size (``frame_short_side``), never above it, and a smaller one at its own
(the transform upscales it, as it would the tutorial's). It keeps the boxes of the contract's
person class scoring at or above the contract's threshold (the tutorial's 0.75), most confident first.

On a GPU worker it runs on the worker's GPU (the handler's ``choose_device``): the frame is copied
there and the boxes come back to the CPU. It runs in float32 there too: its threshold decides who
is answered, and a reduced precision would move scores across it. One detection at load checks
that it runs there (torchvision's CUDA NMS and RoIAlign); if loading or that fails, the worker logs
why and it runs on the CPU. ``name`` says which (``torchscript-cuda-fp32``, ``torchscript-fp32``).
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
from handler.runtime_base import CPU, to_device
from handler.runtime_torchscript import torchscript_name

log = logging.getLogger(__name__)


# The size of the blank frame of the check at load on a GPU (the transform resizes it anyway).
CHECK_FRAME_SIDE = 64


@dataclass
class PersonFinder:
    """``find(frame)``: (H, W, 3) uint8 upright frame on the CPU -> (boxes (N, 4) float32 in its
    pixels, scores (N,)), on the CPU; the network runs on ``device``."""

    module: torch.jit.ScriptModule
    detector: PersonDetector
    min_size: int
    max_size: int
    device: torch.device = CPU

    @property
    def name(self) -> str:
        """The runtime answers name: float32 TorchScript, on a GPU or on the CPU."""
        return torchscript_name(self.device, "fp32")

    @classmethod
    def load(cls, model_dir: Path, detector: PersonDetector, device: torch.device = CPU) -> "PersonFinder":
        """The packed detector on ``device`` (the worker's), or on the CPU where that GPU cannot run it."""
        if device.type == "cuda":
            try:
                finder = cls._load(model_dir, detector, device)
                finder.find(torch.zeros(CHECK_FRAME_SIDE, CHECK_FRAME_SIDE, 3, dtype=torch.uint8))
                return finder
            except Exception as exc:  # never a dead worker: the CPU runs the same file
                log.warning("the person detector cannot run on %s (%s: %s); it runs on the CPU",
                            device, type(exc).__name__, exc, exc_info=True)
        return cls._load(model_dir, detector, CPU)

    @classmethod
    def _load(cls, model_dir: Path, detector: PersonDetector, device: torch.device) -> "PersonFinder":
        module = torch.jit.load(str(model_dir / detector.file), map_location=device).eval()
        min_size, max_size = transform_sizes(module)
        finder = cls(module, detector, min_size, max_size, device)
        log.info("person detector %s loaded (weights: %s, threshold %g, frames up to short side %d, long side %d), "
                 "runtime %s on %s", detector.architecture, detector.weights, detector.score_threshold,
                 min_size, max_size, finder.name, device)
        return finder

    def frame_short_side(self, width: int, height: int) -> int:
        """The short side to decode a ``width`` x ``height`` picture at for the detector: its own, or
        less where the detector's transform would shrink it (short side ``min_size``, long side at
        most ``max_size``: torchvision's ``GeneralizedRCNNTransform`` scale)."""
        short, long = min(width, height), max(width, height)
        scale = min(1.0, self.min_size / short, self.max_size / long)
        return max(1, int(short * scale))

    def find(self, frame: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # The uint8 frame is what crosses to a GPU (4x fewer bytes than floats); on the CPU nothing moves.
        image = to_device(frame, self.device).permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            _, found = self.module([image])
        answer = found[0]
        keep = (answer["labels"] == self.detector.label_index) & (answer["scores"] >= self.detector.score_threshold)
        boxes, scores = answer["boxes"][keep].float().cpu(), answer["scores"][keep].float().cpu()
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
