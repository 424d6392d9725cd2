"""pytorchvideo's hub-tutorial preprocessing for slowfast_r50, as the reference to compare against.

pytorchvideo.transforms imports ``torchvision.transforms.functional_tensor``, which current
torchvision no longer has; its functions live in ``torchvision.transforms.functional``.
"""

from __future__ import annotations

import sys
from typing import List, Tuple

import torch


def alias_functional_tensor() -> None:
    import torchvision.transforms.functional as functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)


def reference_pathways(
    path: str, window: Tuple[float, float], num_frames: int = 32, alpha: int = 4, side: int = 256,
    mean: float = 0.45, std: float = 0.225,
) -> List[torch.Tensor]:
    """``[slow (3,T/a,side,side), fast (3,T,side,side)]`` float32 as the tutorial computes them."""
    alias_functional_tensor()
    from pytorchvideo.data.encoded_video import EncodedVideo
    from pytorchvideo.transforms import ShortSideScale, UniformTemporalSubsample
    from torchvision.transforms import Compose, Lambda
    from torchvision.transforms._transforms_video import CenterCropVideo, NormalizeVideo

    class PackPathway(torch.nn.Module):
        def forward(self, frames: torch.Tensor) -> List[torch.Tensor]:
            index = torch.linspace(0, frames.shape[1] - 1, frames.shape[1] // alpha).long()
            return [torch.index_select(frames, 1, index), frames]

    transform = Compose(
        [
            UniformTemporalSubsample(num_frames),
            Lambda(lambda x: x / 255.0),
            NormalizeVideo([mean] * 3, [std] * 3),
            ShortSideScale(size=side),
            CenterCropVideo(side),
            PackPathway(),
        ]
    )
    video = EncodedVideo.from_path(path, decoder="pyav", decode_audio=False)
    clip = video.get_clip(start_sec=window[0], end_sec=window[1])["video"]
    return transform(clip)
