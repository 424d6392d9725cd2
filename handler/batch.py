"""Plan and run the views of a whole TorchServe batch through the model in micro-batches.

A view is one (window, crop) of one video. Frames stay uint8 until their micro-batch is built,
so memory is bounded by the micro-batch size, not by clips x crops x requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from handler.contract import PreprocessContract
from handler.transforms import crop_offsets
from handler.transforms import crop_and_normalize, pack_pathways


@dataclass
class PreparedVideo:
    """One decoded video of a request: uint8 (T, H, W, 3) frames per window, plus its bookkeeping."""

    windows: List[Tuple[float, float]]
    frames: List[torch.Tensor]
    crops: int
    info: Dict[str, object]
    warnings: List[str] = field(default_factory=list)
    probability_sum: torch.Tensor = None  # type: ignore[assignment]
    views_done: int = 0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0

    @property
    def num_views(self) -> int:
        return len(self.frames) * self.crops


@dataclass(frozen=True)
class _View:
    video: PreparedVideo
    window_index: int
    offset: Tuple[int, int]


def _views(videos: Sequence[PreparedVideo], crop_size: int) -> List[_View]:
    views = []
    for video in videos:
        for index, frames in enumerate(video.frames):
            _, height, width, _ = frames.shape
            for offset in crop_offsets(height, width, crop_size, video.crops):
                views.append(_View(video, index, offset))
    return views


def _chunks(items: List[_View], size: int) -> Iterator[List[_View]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_views(
    videos: Sequence[PreparedVideo],
    contract: PreprocessContract,
    probabilities: Callable[[List[torch.Tensor]], torch.Tensor],
    micro_batch: int,
) -> None:
    """Sum class probabilities over each video's views into ``video.probability_sum``.

    Frames are expected on the model's device already. ``probabilities`` maps ``[slow (B,3,T/a,c,c), fast (B,3,T,c,c)]`` float to (B, classes).
    Per-video preprocess and inference times are the chunk times shared out per view.
    """
    for video in videos:
        video.probability_sum = torch.zeros(contract.num_classes, dtype=torch.float32)
    for chunk in _chunks(_views(videos, contract.crop_size), micro_batch):
        started = time.perf_counter()
        fast = torch.cat(
            [
                crop_and_normalize(
                    view.video.frames[view.window_index], [view.offset],
                    contract.crop_size, contract.mean, contract.std,
                )
                for view in chunk
            ]
        )
        pathways = pack_pathways(fast, contract.alpha)
        prepared = time.perf_counter()
        probs = probabilities(pathways)
        finished = time.perf_counter()
        share_pre = (prepared - started) * 1000 / len(chunk)
        share_inf = (finished - prepared) * 1000 / len(chunk)
        for row, view in enumerate(chunk):
            view.video.probability_sum += probs[row]
            view.video.views_done += 1
            view.video.preprocess_ms += share_pre
            view.video.inference_ms += share_inf


def top_predictions(probabilities: torch.Tensor, labels: Sequence[str], k: int) -> List[Dict[str, object]]:
    """Top-``k`` of a (classes,) probability vector, descending."""
    values, indices = torch.topk(probabilities, k)
    return [
        {"label": labels[int(i)], "index": int(i), "probability": float(v)}
        for v, i in zip(values.tolist(), indices.tolist())
    ]
