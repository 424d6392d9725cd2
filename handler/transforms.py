"""Where to look in a frame (scaled size, crops) and pure tensor functions from sampled uint8
frames to the model's ``[slow, fast]`` input.

They run on whatever device their input is on (the worker's GPU when it has one). Work stays in
uint8 until the crop, then a single fused scale-and-shift replaces /255, -mean, /std: resizing
and cropping uint8 first costs a fraction of the float pipeline and matches it within one uint8
step.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def crop_offsets(height: int, width: int, crop_size: int, crops: int) -> List[Tuple[int, int]]:
    """Top-left ``(y, x)`` of each square crop: 1 = center; 3 = start/center/end of the long side.

    One crop is torchvision's ``CenterCropVideo`` (the hub tutorial's): offsets
    ``int(round((size - crop) / 2))``. Three are pytorchvideo's ``uniform_crop`` with
    ``spatial_idx`` 0, 1, 2 (the SlowFast test protocol), whose centre rounds up:
    ``ceil((size - crop) / 2)``. The two differ by one pixel where ``size - crop`` is odd.
    """
    if crop_size > min(height, width):
        raise ValueError(f"crop {crop_size} larger than frame {height}x{width}")
    if crops == 1:
        return [(int(round((height - crop_size) / 2)), int(round((width - crop_size) / 2)))]
    if crops != 3:
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    y_center, x_center = math.ceil((height - crop_size) / 2), math.ceil((width - crop_size) / 2)
    if height > width:
        return [(0, x_center), (y_center, x_center), (height - crop_size, x_center)]
    return [(y_center, 0), (y_center, x_center), (y_center, width - crop_size)]


def scaled_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """``(height, width)`` with the short side at ``short_side``, aspect kept (pytorchvideo's rounding)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"bad frame size {height}x{width}")
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def rotate_frames(frames: torch.Tensor, rotation_degrees: int) -> torch.Tensor:
    """Turn (T, H, W, C) frames as a player honouring a display matrix would show them.

    ``rotation_degrees`` is FFmpeg's counter-clockwise display rotation (``frame.rotation``),
    a multiple of 90.
    """
    quarter_turns = (int(round(rotation_degrees / 90.0))) % 4
    if quarter_turns == 0:
        return frames
    return torch.rot90(frames, k=quarter_turns, dims=(1, 2)).contiguous()


def resize_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize (T, H, W, C) uint8 frames so min(H, W) == short_side; bilinear, returns uint8.

    Used when frames arrive at another size than decoding was asked for; decoding normally
    scales in FFmpeg already.
    """
    t, h, w, c = frames.shape
    if min(h, w) == short_side:
        return frames
    new_h, new_w = scaled_size(h, w, short_side)
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def crop_and_normalize(
    frames: torch.Tensor,
    offsets: Sequence[Tuple[int, int]],
    *,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Square crops of (T, H, W, 3) uint8 frames, normalized, channels first.

    Returns:
        (len(offsets), 3, T, crop_size, crop_size) tensor of ``dtype``:
        ``(pixel / 255 - mean) / std`` per channel; written into ``out`` (that shape, float32)
        when given.

    Each crop is converted straight into its place in the channels-first result and normalized
    there: one float buffer, no float temporaries. Every buffer of this size is a fresh mapping
    in a worker (handler/heap.py), so each temporary costs its size in page faults: the stack,
    float copy, product and contiguous copy this replaced faulted ~110 MB per view and made the
    worker's preprocess several times slower than the arithmetic.
    """
    shape = (len(offsets), 3, frames.shape[0], crop_size, crop_size)
    if out is not None and (tuple(out.shape) != shape or out.dtype != torch.float32 or dtype != torch.float32):
        raise ValueError(f"out must be float32 {shape} (and dtype float32), got {out.dtype} {tuple(out.shape)}")
    target = out if out is not None else torch.empty(shape, dtype=torch.float32, device=frames.device)
    for view, (y, x) in enumerate(offsets):
        # (T, h, w, C) uint8 -> (C, T, h, w) float32, converted as it is copied
        target[view].copy_(frames[:, y : y + crop_size, x : x + crop_size, :].permute(3, 0, 1, 2))
    _normalize_in_place(target, mean=mean, std=std)
    return target if dtype == torch.float32 else target.to(dtype)


def normalize_views(
    views: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(V, T, h, w, 3) uint8 -> (V, 3, T, h, w) ``dtype``: ``(pixel / 255 - mean) / std`` per channel,
    converted into one channels-first float32 buffer and normalized there (no float temporaries)."""
    v, t, h, w, _ = views.shape
    target = torch.empty((v, 3, t, h, w), dtype=torch.float32, device=views.device)
    target.copy_(views.permute(0, 4, 1, 2, 3))
    _normalize_in_place(target, mean=mean, std=std)
    return target if dtype == torch.float32 else target.to(dtype)


def _normalize_in_place(target: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> None:
    """(V, 3, T, h, w) float32 pixels in [0, 255] -> ``(pixel / 255 - mean) / std``, in place: one
    multiply-add (the same floats as the unfused form's addcmul)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=target.device, dtype=torch.float32).view(1, 3, 1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=target.device, dtype=torch.float32).view(1, 3, 1, 1, 1)
    torch.addcmul(shift, target, scale, out=target)


def slow_indices(num_frames: int, alpha: int) -> List[int]:
    """Frames of the fast pathway kept by the slow one: pytorchvideo's PackPathway rule,
    ``linspace(0, T - 1, T // alpha)`` truncated (0, 4, 8, 13, 17, 22, 26, 31 for T=32, alpha=4)."""
    return torch.linspace(0, num_frames - 1, num_frames // alpha).long().tolist()


def pack_pathways(fast: torch.Tensor, alpha: int) -> List[torch.Tensor]:
    """(B, 3, T, H, W) fast pathway -> ``[slow (B, 3, T // alpha, H, W), fast]``."""
    index = torch.tensor(slow_indices(fast.shape[2], alpha), device=fast.device)
    return [fast.index_select(2, index), fast]
