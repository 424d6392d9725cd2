"""The one reference pipeline: pytorchvideo's ``EncodedVideo`` + the hub tutorial's transforms for slowfast_r50.

Tests compare the handler's inputs to it; the benchmark times it beside the handler.

From https://pytorch.org/hub/facebookresearch_pytorchvideo_slowfast/ :
``EncodedVideo.get_clip(start, start + 64/30)`` then ``ApplyTransformToKey("video",
Compose([UniformTemporalSubsample(32), Lambda(x / 255), NormalizeVideo(0.45, 0.225),
ShortSideScale(256), CenterCropVideo(256), PackPathway(alpha=4)]))``.

Two deliberate deviations, both in the reference's favour: the video is opened from bytes
already in memory (as our handler gets it), and audio is not decoded (``decode_audio=False``;
the tutorial's ``from_path`` default decodes it). ``from_path`` itself reads the whole file
into memory before opening it, so opening bytes changes nothing else.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch


def alias_functional_tensor() -> None:
    """pytorchvideo 0.1.5 imports ``torchvision.transforms.functional_tensor``, gone from torchvision
    >= 0.17; its functions live in ``torchvision.transforms.functional`` now."""
    import torchvision.transforms.functional as functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)


def _import_pytorchvideo():
    alias_functional_tensor()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorchvideo.data.encoded_video import select_video_class
        from pytorchvideo.transforms import ApplyTransformToKey, ShortSideScale, UniformTemporalSubsample
        from torchvision.transforms import Compose, Lambda
        from torchvision.transforms._transforms_video import CenterCropVideo, NormalizeVideo
    # What EncodedVideo.from_path(path, decoder="pyav") instantiates, minus reading the file.
    EncodedVideo = select_video_class("pyav")
    return EncodedVideo, ApplyTransformToKey, ShortSideScale, UniformTemporalSubsample, Compose, Lambda, \
        CenterCropVideo, NormalizeVideo


class PackPathway(torch.nn.Module):
    """The tutorial's PackPathway: slow = ``linspace(0, T-1, T // alpha)`` frames of the fast pathway."""

    def __init__(self, alpha: int) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, frames: torch.Tensor) -> List[torch.Tensor]:
        fast = frames
        slow = torch.index_select(
            frames, 1, torch.linspace(0, frames.shape[1] - 1, frames.shape[1] // self.alpha).long()
        )
        return [slow, fast]


class ReferencePipeline:
    """``run(video_bytes, start, end)`` -> the model's ``[slow, fast]`` input (batch dim added)."""

    def __init__(self, *, num_frames: int = 32, side: int = 256, crop: int = 256, alpha: int = 4,
                 mean: Tuple[float, ...] = (0.45,) * 3, std: Tuple[float, ...] = (0.225,) * 3) -> None:
        (EncodedVideo, ApplyTransformToKey, ShortSideScale, UniformTemporalSubsample, Compose, Lambda,
         CenterCropVideo, NormalizeVideo) = _import_pytorchvideo()
        self._encoded_video = EncodedVideo
        self.transform = ApplyTransformToKey(
            key="video",
            transform=Compose([
                UniformTemporalSubsample(num_frames),
                Lambda(lambda x: x / 255.0),
                NormalizeVideo(list(mean), list(std)),
                ShortSideScale(size=side),
                CenterCropVideo(crop),
                PackPathway(alpha),
            ]),
        )

    def run_timed(self, video: bytes, start: float, end: float) -> Tuple[float, float, List[torch.Tensor]]:
        """``(decode_ms, transform_ms, [slow, fast])``: EncodedVideo open + get_clip, then the transforms."""
        started = time.perf_counter()
        encoded = self._encoded_video(io.BytesIO(video), "clip", decode_audio=False)
        try:
            clip = encoded.get_clip(start_sec=start, end_sec=end)
        finally:
            encoded.close()
        decoded = time.perf_counter()
        if clip.get("video") is None:
            raise RuntimeError(f"reference pipeline found no frames in {start:.3f}-{end:.3f} s")
        data = self.transform(clip)
        finished = time.perf_counter()
        return (decoded - started) * 1000, (finished - decoded) * 1000, [x[None, ...] for x in data["video"]]

    def run(self, video: bytes, start: float, end: float) -> List[torch.Tensor]:
        return self.run_timed(video, start, end)[2]


def reference_pathways(
    path: Union[str, Path], window: Tuple[float, float], *, num_frames: int = 32, alpha: int = 4
) -> List[torch.Tensor]:
    """``[slow (3,T/a,256,256), fast (3,T,256,256)]`` float32 of the file at ``path`` for ``window``
    (seconds), as the tutorial computes them for slowfast_r50 (no batch dimension); ``num_frames``
    and ``alpha`` for another variant's sampling."""
    slow, fast = ReferencePipeline(num_frames=num_frames, alpha=alpha).run(Path(path).read_bytes(), window[0], window[1])
    return [slow[0], fast[0]]


def ava_reference_input(
    video: bytes, keyframe: float, boxes: Sequence[Sequence[float]], *, clip_seconds: float = 1.0,
    num_frames: int = 32, side: int = 256, alpha: int = 4,
    mean: Tuple[float, ...] = (0.45,) * 3, std: Tuple[float, ...] = (0.225,) * 3,
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """The pytorchvideo detection tutorial's input for the keyframe at ``keyframe`` s and person
    ``boxes`` (x1, y1, x2, y2 in the video's pixels): ``([slow (1,3,T/a,H,W), fast (1,3,T,H,W)],
    boxes (N,5) float32 (0, x1, y1, x2, y2))``.

    https://pytorchvideo.org/docs/tutorial_torchhub_detection_inference : ``EncodedVideo.get_clip(
    t - clip/2, t + clip/2)`` then ``ava_inference_transform(clip, boxes, num_frames=32,
    crop_size=256, slow_fast_alpha=4)``. pytorchvideo 0.1.5 does not ship that function (it lives in
    the tutorial): it is composed here of the same pytorchvideo/torchvision functions, in its order:
    ``uniform_temporal_subsample``, /255, ``clip_boxes_to_image``, ``short_side_scale_with_boxes``,
    ``normalize``, ``clip_boxes_to_image``, slow = ``linspace(0, T-1, T // alpha)`` frames. Opened
    from bytes without audio, as ``ReferencePipeline`` (see there).
    """
    import numpy as np

    alias_functional_tensor()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorchvideo.data.encoded_video import select_video_class
        from pytorchvideo.transforms.functional import (
            clip_boxes_to_image, short_side_scale_with_boxes, uniform_temporal_subsample,
        )
        from torchvision.transforms._functional_video import normalize
    encoded = select_video_class("pyav")(io.BytesIO(video), "clip", decode_audio=False)
    try:
        clip = encoded.get_clip(keyframe - clip_seconds / 2.0, keyframe + clip_seconds / 2.0)["video"]
    finally:
        encoded.close()
    given = np.array(boxes, dtype=np.float32)
    clip = uniform_temporal_subsample(clip, num_frames).float() / 255.0
    height, width = clip.shape[2], clip.shape[3]
    given = clip_boxes_to_image(given, height, width)
    clip, given = short_side_scale_with_boxes(clip, size=side, boxes=given)
    clip = normalize(clip, np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32))
    given = clip_boxes_to_image(given, clip.shape[2], clip.shape[3])
    slow = torch.index_select(clip, 1, torch.linspace(0, clip.shape[1] - 1, clip.shape[1] // alpha).long())
    rois = torch.cat([torch.zeros(len(given), 1), torch.from_numpy(np.asarray(given, dtype=np.float32))], 1)
    return [slow[None], clip[None]], rois
