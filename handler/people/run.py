"""A keyframe's window and boxes -> each box's action probabilities.

The window's frames are the decoder's working frames (upright, short side the contract's, no crop:
``ava_inference_transform``'s), normalized and packed into the two pathways exactly as the
classifier's (``handler.transforms``); boxes are in the working frame's pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import torch

from handler.contract import PreprocessContract
from handler.people.model import ActionDetector
from handler.runtime_base import to_device
from handler.transforms import normalize_views, pack_pathways


@dataclass
class KeyframeScores:
    """(N, classes) logits and probabilities of a keyframe's N boxes; timings in ms."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    preprocess_ms: float
    inference_ms: float


def window_pathways(frames: torch.Tensor, contract: PreprocessContract) -> List[torch.Tensor]:
    """(T, H, W, 3) uint8 working frames -> ``[slow (1,3,T/a,H,W), fast (1,3,T,H,W)]`` float32."""
    fast = normalize_views(frames[None], mean=contract.mean, std=contract.std)
    return pack_pathways(fast, contract.alpha)


def score_keyframe(model: ActionDetector, frames: torch.Tensor, boxes: torch.Tensor) -> KeyframeScores:
    """The N boxes (N, 4) float32 working pixels of one window (T, H, W, 3) uint8, both on the CPU ->
    their scores (float32, on the CPU), computed on the model's device."""
    classes = model.contract.num_classes
    if boxes.shape[0] == 0:
        empty = torch.zeros(0, classes)
        return KeyframeScores(empty, empty.clone(), 0.0, 0.0)
    started = time.perf_counter()
    # On a GPU worker the uint8 frames go to the detector's GPU and are normalized there, as the
    # classifier's are (4x fewer bytes to copy than the float pathways); on the CPU nothing moves.
    pathways = window_pathways(to_device(frames, model.device), model.contract)
    rois = torch.cat([torch.zeros(boxes.shape[0], 1), boxes.float()], 1)
    prepared = time.perf_counter()
    logits, probabilities = model.infer(pathways, rois)
    finished = time.perf_counter()
    return KeyframeScores(logits, probabilities, (prepared - started) * 1000, (finished - prepared) * 1000)
