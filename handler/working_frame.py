"""Decoded frame -> the working RGB frame: bounded aspect ratio, short side scaled, in FFmpeg.

The working frame is what sampling hands on: short side = the contract's short side, long side
at most ``max_aspect_ratio`` times that. A frame more elongated than that (an "aspect-ratio
bomb": 8192x16 would otherwise become 131072x256 RGB, 100 MB per frame) has its central region
of the allowed aspect cut out in the source format before scaling, so no large RGB frame is
ever allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Optional, Tuple

import av
import av.filter
import numpy as np

from handler.transforms import scaled_size


@dataclass(frozen=True)
class WorkingGeometry:
    """How one stored frame becomes a working frame.

    ``crop`` is ``(x, y, width, height)`` in the stored frame (None = the whole frame);
    ``width`` x ``height`` is the scaled output in the stored orientation (rotation is applied
    afterwards, on the RGB tensor); ``rotation`` is FFmpeg's counter-clockwise display rotation.
    """

    source: Tuple[int, int]
    crop: Optional[Tuple[int, int, int, int]]
    width: int
    height: int
    rotation: int

    def note(self) -> Optional[str]:
        """A sentence for the answer's warnings when the frame was cropped, else None."""
        if self.crop is None:
            return None
        w, h = self.source
        cw, ch = self.crop[2], self.crop[3]
        return (
            f"the frame is {w}x{h} (aspect {_ratio(w, h)}); the central {cw}x{ch} region, "
            f"aspect {_ratio(cw, ch)}, was used"
        )


def _ratio(w: int, h: int) -> str:
    return f"{max(w, h) / min(w, h):.3g}:1"


def working_geometry(
    width: int, height: int, *, rotation: int, short_side: int, max_aspect_ratio: float
) -> WorkingGeometry:
    """Geometry of the working frame for a stored ``width`` x ``height`` frame.

    When ``long / short > max_aspect_ratio`` the long side is cut centrally to
    ``floor(short * max_aspect_ratio)`` (rounded down to even, for chroma-subsampled formats).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    crop = None
    cw, ch = width, height
    long_side, short = max(width, height), min(width, height)
    if max_aspect_ratio >= 1 and long_side > short * max_aspect_ratio:
        keep = max(1, int(short * max_aspect_ratio))
        keep -= keep % 2 if keep > 2 else 0
        if width >= height:
            crop, cw = ((width - keep) // 2 // 2 * 2, 0, keep, height), keep
        else:
            crop, ch = (0, (height - keep) // 2 // 2 * 2, width, keep), keep
    upright_h, upright_w = (cw, ch) if rotation % 180 else (ch, cw)
    out_h, out_w = scaled_size(upright_h, upright_w, short_side)
    if rotation % 180:
        out_h, out_w = out_w, out_h  # scale before rotating: back to the stored orientation
    return WorkingGeometry(source=(width, height), crop=crop, width=out_w, height=out_h, rotation=rotation)


class FrameConverter:
    """Converts decoded frames to (H, W, 3) uint8 RGB working frames (stored orientation).

    Uncropped frames go through swscale (``reformat``, bilinear); cropped ones through an FFmpeg
    filter graph ``crop,scale,format=rgb24`` built once per input format and geometry.
    """

    def __init__(self) -> None:
        self._graphs: Dict[tuple, av.filter.Graph] = {}

    def convert(self, frame: av.VideoFrame, geometry: WorkingGeometry) -> np.ndarray:
        if geometry.crop is None:
            return frame.reformat(
                width=geometry.width, height=geometry.height, format="rgb24", interpolation="BILINEAR"
            ).to_ndarray()
        graph = self._graph(frame, geometry)
        graph.push(frame)
        return graph.pull().to_ndarray()

    def _graph(self, frame: av.VideoFrame, geometry: WorkingGeometry) -> av.filter.Graph:
        key = (frame.width, frame.height, frame.format.name, geometry)
        if key not in self._graphs:
            x, y, w, h = geometry.crop  # type: ignore[misc]
            graph = av.filter.Graph()
            chain = [
                graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                 time_base=frame.time_base or Fraction(1, 1000)),
                graph.add("crop", f"{w}:{h}:{x}:{y}"),
                graph.add("scale", f"{geometry.width}:{geometry.height}:flags=bilinear"),
                graph.add("format", "rgb24"),
                graph.add("buffersink"),
            ]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            graph.configure()
            self._graphs[key] = graph
        return self._graphs[key]
