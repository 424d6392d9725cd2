"""Video bytes -> the frames shown at chosen instants, decoding only what they need.

A package with one job per module, read in this order:

- ``budget``: the service's decode limits and a request's wall-time budget.
- ``source``: opening the container, choosing its video stream, and priming a codec context with
  the stream start (what a decoder must have seen to decode any later keyframe as from byte 0).
- ``probe``: time base, first frame time, frame rate and duration, by demuxing alone.
- ``seek``: ``StreamReader``: one opened stream decoded forward from start points (the keyframe
  before a target, further back, byte 0) that the decode itself proves right, frames in time order.
- ``decoder``: ``VideoDecoder``: the frames shown at the instants a caller's policy chooses
  (``frames_at``), windows close together decoded in one pass, converted to working frames;
  ``sample``/``sample_windows`` apply the uniform policy of ``handler.sampling``.
"""

from handler.decoding.budget import DecodeBudget, DecodeLimits
from handler.decoding.decoder import DecodeStats, InstantChooser, SampledWindow, VideoDecoder
from handler.decoding.probe import VideoInfo

__all__ = [
    "DecodeBudget", "DecodeLimits", "DecodeStats", "InstantChooser", "SampledWindow", "VideoDecoder", "VideoInfo",
]
