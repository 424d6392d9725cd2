"""Boxes between the video's upright pixels and the working frame's, both ways.

A box in a request or an answer is in the video's upright pixels: the frame at full resolution as
a player shows it (display-matrix rotation applied). The model sees the working frame
(``handler.working_frame``): the same picture turned upright, maybe cut to its central region
(extreme aspect ratios), scaled so its short side is the contract's. ``BoxMapping`` holds that
relation for one video, computed from the same ``working_geometry`` the decoder uses, so boxes
follow the frames exactly.

Clipping follows the hub tutorial's ``ava_inference_transform`` (pytorchvideo's
``clip_boxes_to_image``): into ``[0, width - 1] x [0, height - 1]`` before scaling and again after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from handler.errors import RequestError
from handler.working_frame import WorkingGeometry

Box = Tuple[float, float, float, float]


def _turn_point(x: float, y: float, width: float, height: float, quarter_turns: int) -> Tuple[float, float]:
    """Point (x, y) of a ``width`` x ``height`` picture after ``torch.rot90(k=quarter_turns)`` over (H, W)
    (``handler.transforms.rotate_frames``): k=1 takes (x, y) to (y, width - x)."""
    if quarter_turns == 1:
        return y, width - x
    if quarter_turns == 2:
        return width - x, height - y
    if quarter_turns == 3:
        return height - y, x
    return x, y


@dataclass(frozen=True)
class BoxMapping:
    """Upright video pixels <-> working-frame pixels for one video.

    ``display``: (width, height) upright at full resolution; ``region``: (x, y, width, height) of
    the upright picture the working frame shows (all of it unless cut for its aspect ratio);
    ``working``: (width, height) of the upright working frame (or of the person detector's frame:
    the same region at another size, ``handler.people.decode``).
    """

    display: Tuple[int, int]
    region: Tuple[float, float, float, float]
    working: Tuple[int, int]

    @classmethod
    def of(cls, geometry: WorkingGeometry) -> "BoxMapping":
        width, height = geometry.source
        turns = int(round(geometry.rotation / 90.0)) % 4
        crop = geometry.crop or (0, 0, width, height)
        corners = [_turn_point(x, y, width, height, turns)
                   for x, y in ((crop[0], crop[1]), (crop[0] + crop[2], crop[1] + crop[3]))]
        x1, x2 = sorted(c[0] for c in corners)
        y1, y2 = sorted(c[1] for c in corners)
        display = (height, width) if turns % 2 else (width, height)
        working = (geometry.height, geometry.width) if turns % 2 else (geometry.width, geometry.height)
        return cls(display=display, region=(x1, y1, x2 - x1, y2 - y1), working=working)

    @property
    def scale(self) -> Tuple[float, float]:
        """Working pixels per upright video pixel, (x, y): one factor for both, the long side's, as
        pytorchvideo's ``short_side_scale_with_boxes`` scales boxes (the short side's differs from
        it by the rounding of the long side to whole pixels: under one pixel)."""
        if self.region[2] >= self.region[3]:
            factor = self.working[0] / self.region[2]
        else:
            factor = self.working[1] / self.region[3]
        return factor, factor

    def to_working(self, boxes: Sequence[Box], where: str = "box") -> torch.Tensor:
        """(N, 4) float32 working-frame boxes of upright video ``boxes``: clipped to the video,
        scaled, clipped to the working frame. 422 for a box with nothing left inside the frame."""
        if not boxes:
            return torch.zeros(0, 4)
        given = torch.tensor(boxes, dtype=torch.float32)
        clipped = clip_boxes(given, *self.display)
        empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        if bool(empty.any()):
            index = int(empty.nonzero()[0])
            raise RequestError(
                422, "box_outside_frame",
                f"{where} {index} {list(boxes[index])} has nothing inside the {self.display[0]}x{self.display[1]} "
                "frame (upright video pixels)",
            )
        return self._scaled_to_working(clipped)

    def _scaled_to_working(self, clipped: torch.Tensor) -> torch.Tensor:
        sx, sy = self.scale
        shift = torch.tensor([self.region[0], self.region[1]] * 2)
        working = (clipped - shift) * torch.tensor([sx, sy, sx, sy])
        return clip_boxes(working, *self.working)

    def found_to_working(self, shown: torch.Tensor) -> torch.Tensor:
        """(N, 4) boxes found by the person detector, already in upright video pixels and clipped
        to the video (``frame_to_display``) -> (N, 4) float32 working pixels, as ``to_working``
        places given boxes (a found box is never refused: the detector keeps boxes of positive size)."""
        return self._scaled_to_working(clip_boxes(shown.float().reshape(-1, 4), *self.display))

    def frame_to_display(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) boxes in this mapping's frame -> (N, 4) float32 upright video pixels, clipped to the
        video. Each axis is scaled by its own factor (frame size over region size), as torchvision's
        detection transform maps boxes back through its own resize: exact for whatever rounding
        made the frame's size (the person detector's frame: ``handler.people.persons``)."""
        sx, sy = self.working[0] / self.region[2], self.working[1] / self.region[3]
        shift = torch.tensor([self.region[0], self.region[1]] * 2)
        return clip_boxes(boxes.float().reshape(-1, 4) / torch.tensor([sx, sy, sx, sy]) + shift, *self.display)

    def to_display(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) working-frame boxes -> (N, 4) float32 upright video pixels, clipped to the video."""
        sx, sy = self.scale
        shift = torch.tensor([self.region[0], self.region[1]] * 2)
        return clip_boxes(boxes.float() / torch.tensor([sx, sy, sx, sy]) + shift, *self.display)

    def clip_display(self, boxes: Sequence[Box]) -> List[Box]:
        """Given upright boxes clipped to the video as the model used them (for the answer)."""
        if not boxes:
            return []
        clipped = clip_boxes(torch.tensor(boxes, dtype=torch.float64), *self.display)
        return [tuple(float(v) for v in row) for row in clipped.tolist()]  # type: ignore[misc]


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """(N, 4) x1, y1, x2, y2 clipped into ``[0, width - 1] x [0, height - 1]`` (pytorchvideo's rule)."""
    high = torch.tensor([width - 1.0, height - 1.0] * 2, dtype=boxes.dtype)
    return torch.minimum(boxes.clamp(min=0.0), high)
