"""The state of one request of a batch on its way through parse -> plan -> decode -> run -> render.

Kept out of the handler module: TorchServe loads a handler module only if it defines one class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from handler.decoding import VideoDecoder
from handler.errors import RequestError
from handler.request_options import RequestOptions
from handler.plan import VideoPlan
from handler.protocol import ParsedRequest
from handler.run import WindowScores


@dataclass
class VideoWork:
    """One opened video of a request, its plan, and the scores of its windows as they come."""

    decoder: VideoDecoder
    plan: VideoPlan
    scores: List[WindowScores] = field(default_factory=list)
    decode_ms: float = 0.0
    frames_decoded: int = 0
    decode_errors: int = 0


@dataclass
class RequestWork:
    """One request of the batch on its way through the path; ``error`` set once it failed."""

    index: int
    parsed: Optional[ParsedRequest] = None
    options: Optional[RequestOptions] = None
    videos: List[VideoWork] = field(default_factory=list)
    error: Optional[RequestError] = None
    streamed: int = 0

    @property
    def streaming(self) -> bool:
        return self.options is not None and self.options.stream

    @property
    def views(self) -> int:
        return sum(video.plan.views for video in self.videos)
