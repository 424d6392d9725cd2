"""Windows of real videos for int8 calibration and for measuring it, made as the handler makes them.

Each video is opened and sampled with the handler's decoder (``handler.decoding``), its windows are
the handler's timeline windows (``handler.plan``) and each window's model input is the handler's
own preprocessing of the centre crop (``handler.run.view_pathways``): the quantizer sees exactly
the inputs a worker will feed it. Videos alternate between the calibration set and the held-out
set (by name), so the agreement figures come from videos the quantizer never saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from handler.contract import PreprocessContract
from handler.decoding import DecodeLimits, VideoDecoder
from handler.errors import RequestError
from handler.request_options import RequestOptions
from handler.serve_settings import ServeOptions
from handler.plan import plan_video
from handler.run import view_pathways
from handler.transforms import crop_offsets

log = logging.getLogger(__name__)

# Beside the repo, where present (the shared test material): the default calibration videos.
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "videos"
# Windows taken from one video at most, spread over it: a long video must not be the whole set.
MAX_WINDOWS_PER_VIDEO = 6
# Timeline windows every half window: short videos still give a few windows each.
WINDOW_STRIDE = 0.5


class CalibrationError(ValueError):
    """No usable videos to calibrate on (or to measure the calibration with)."""


@dataclass(frozen=True)
class CalibrationWindow:
    """One window's model input: ``pathways`` = ``[slow (1,3,T/a,c,c), fast (1,3,T,c,c)]`` float32."""

    video: str
    start: float
    pathways: List[torch.Tensor]


@dataclass(frozen=True)
class CalibrationSet:
    """``calibration`` windows feed the quantizer; ``held_out`` windows (other videos) measure it."""

    folder: Path
    calibration: List[CalibrationWindow]
    held_out: List[CalibrationWindow]

    @property
    def videos(self) -> Tuple[int, int]:
        """(videos calibrated on, videos held out)."""
        return len({w.video for w in self.calibration}), len({w.video for w in self.held_out})


def choose_folder(requested: Optional[Path], default: Path = DEFAULT_FOLDER) -> Path:
    """``requested`` (CALIBRATION=folder), else ``default`` where it exists; CalibrationError otherwise."""
    folder = requested or default
    if not folder.is_dir():
        if requested is None:
            raise CalibrationError(
                f"int8 needs real videos to calibrate on: {default} does not exist; "
                "give a folder of videos: `make mar PRECISION=int8 CALIBRATION=/path/to/videos`"
            )
        raise CalibrationError(f"calibration folder {folder} does not exist (CALIBRATION=folder of videos)")
    return folder


def video_windows(path: Path, contract: PreprocessContract, limit: int = MAX_WINDOWS_PER_VIDEO) -> List[CalibrationWindow]:
    """Up to ``limit`` windows of ``path``, spread over its timeline; [] when it is no video the
    handler would answer (audio only, corrupt, unreadable)."""
    serve = ServeOptions()
    limits = DecodeLimits(max_frame_pixels=serve.max_frame_pixels, max_decode_seconds=serve.max_decode_seconds,
                          max_aspect_ratio=serve.max_aspect_ratio)
    try:
        with VideoDecoder(path.read_bytes(), limits, contract.short_side) as decoder:
            plan = plan_video(decoder.info.duration, contract, RequestOptions(
                topk=1, clips=1, crops=1, timeline=True, stride=WINDOW_STRIDE * contract.window_seconds))
            step = max(1, -(-len(plan.windows) // limit))
            windows = plan.windows[::step][:limit]
            out = []
            for window, sampled in zip(windows, decoder.sample_windows(windows, contract.num_frames)):
                if sampled.decode_errors:  # a damaged window is no sample of what the model will see
                    continue
                _, height, width, _ = sampled.frames.shape
                offset = crop_offsets(height, width, contract.crop_size, 1)[0]
                out.append(CalibrationWindow(path.name, window[0], view_pathways([(sampled.frames, offset)], contract)))
            return out
    except (RequestError, OSError) as exc:
        log.info("calibration: %s skipped (%s)", path.name, exc)
        return []


def calibration_set(
    folder: Path, contract: PreprocessContract, limit: int = MAX_WINDOWS_PER_VIDEO, hold_out_every: int = 2
) -> CalibrationSet:
    """The windows of every video in ``folder`` (by name): every ``hold_out_every``-th usable
    video is held out. CalibrationError without at least one video on each side."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    calibration: List[CalibrationWindow] = []
    held_out: List[CalibrationWindow] = []
    used = 0
    for path in files:
        windows = video_windows(path, contract, limit)
        if not windows:
            continue
        used += 1
        (held_out if used % hold_out_every == 0 else calibration).extend(windows)
    if not calibration or not held_out:
        raise CalibrationError(
            f"int8 needs at least 2 videos to calibrate on and measure with; {folder} has {used} "
            f"usable video(s) among {len(files)} file(s): give a folder of videos (CALIBRATION=folder)"
        )
    return CalibrationSet(folder, calibration, held_out)

