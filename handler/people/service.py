"""The action detector's batch: each request parse -> plan -> decode -> run -> render, one status each.

``PeopleService`` is what ``SlowFastHandler`` hands a batch to when its model file's contract says
task "detection"; it owns the loaded model, the packed person detector (or None: then requests
must carry boxes) and the limits. A bad request gets its own 4xx and never fails the others.

A streamed request (``stream``) sends each keyframe's line through its ``KeyframeStream`` as soon as
that keyframe is answered; where streaming allows more keyframes than an answer (the ``_timeline``
registration) its decoding budget is per keyframe, as a streamed timeline's is per window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
from handler.errors import RequestError
from handler.people.decode import KeyframeWindow, PersonsFrames, decode_keyframes
from handler.people.model import ActionDetector
from handler.people.persons import PersonFinder
from handler.people.plan import plan_keyframes
from handler.people.render import KeyframeAnswer, keyframe_line, people_answer, people_reply
from handler.people.request import PeopleRequest, read_people_request, streams_longer
from handler.people.run import score_keyframe
from handler.render import stream_line
from handler.runtime_base import CPU
from handler.serve_settings import ServeOptions

log = logging.getLogger(__name__)

NO_DETECTOR = (
    "this server has no person detector (its weights could not be fetched when the model was exported): "
    "send the persons' boxes with the video (a 'boxes' field or header: "
    '{"<keyframe seconds>": [[x1, y1, x2, y2], ...]} in the video\'s upright pixels)'
)


@dataclass
class KeyframeStream:
    """Where a streamed request's lines go (``send``: one JSON line to its client). ``sent``: lines
    sent so far; once one went out the HTTP status was 200, and a failure can only be a last line."""

    send: Callable[[str], None]
    sent: int = 0

    def line(self, text: str) -> None:
        self.send(text)
        self.sent += 1


# What a per-keyframe decoding budget is spent on, in its 422's words.
STREAMED_KEYFRAME = "one keyframe of this streamed answer"


def decode_budget(options: ServeOptions, streaming: bool) -> DecodeBudget:
    """A request's decoding budget: ``max_decode_seconds`` for the whole request, or per keyframe for
    a stream where streaming allows more keyframes than an answer (the ``_timeline`` registration)."""
    return DecodeBudget(options.max_decode_seconds, per_window=streaming and streams_longer(options),
                        unit=STREAMED_KEYFRAME)


class PeopleService:
    """Loaded action detector + person detector; ``answer(row, headers)`` per request.

    ``device``: the worker's (``handler.runtime.choose_device``): both networks run there, each
    falling back to the CPU on its own where that GPU cannot run it (their ``name`` says where)."""

    def __init__(self, model_file: Path, options: ServeOptions, limits: DecodeLimits,
                 device: torch.device = CPU) -> None:
        self.options = options
        self.limits = limits
        self.model = ActionDetector.load(model_file, options, device=device)
        self.contract = self.model.contract
        assert self.contract.detection is not None
        detector = self.contract.detection.person_detector
        self.finder: Optional[PersonFinder] = (PersonFinder.load(model_file.parent, detector, device)
                                               if detector else None)
        if self.finder is None:
            log.warning("PERSON DETECTION IS OFF: %s has no person detector; requests without boxes get a 400",
                        model_file.name)

    def answer(self, row: Any, headers: Mapping[str, str], stream: Optional[KeyframeStream] = None) -> Any:
        """One request's reply body (streamed: its last line, the keyframes' lines having gone
        through ``stream``); raises ``RequestError`` for a 4xx."""
        started = time.perf_counter()
        request = read_people_request(row, headers, self.options, self.contract.num_classes)
        if request.options.boxes is None and self.finder is None:
            raise RequestError(400, "boxes_required", NO_DETECTOR)
        streaming = request.options.stream and stream is not None
        budget = decode_budget(self.options, streaming)
        with VideoDecoder(request.parsed.videos[0], self.limits, self.contract.short_side, budget=budget) as decoder:
            keyframes = plan_keyframes(request.options, decoder.info.duration, self.contract, self.options)
            timings = {"decode": 0.0, "persons": 0.0, "preprocess": 0.0, "inference": 0.0}
            answers: List[KeyframeAnswer] = []
            frames_decoded = decode_errors = 0
            persons = None if request.options.boxes is not None or self.finder is None else PersonsFrames(
                request.parsed.videos[0], self.limits, budget, self.finder.frame_short_side)
            windows = decode_keyframes(decoder, keyframes, num_frames=self.contract.num_frames,
                                       short_side=self.contract.short_side,
                                       max_aspect_ratio=self.limits.max_aspect_ratio, persons=persons)
            while True:
                keyframe_window = _timed(lambda: next(windows, None), timings, "decode")
                if keyframe_window is None:
                    break
                frames_decoded += keyframe_window.frames_decoded
                decode_errors += keyframe_window.decode_errors
                answers.append(self._keyframe(request, keyframe_window, timings))
                if streaming:
                    assert stream is not None
                    stream.line(keyframe_line(answers[-1], self.contract, request.options, len(answers) - 1, len(keyframes)))
            warnings = decoder.warnings
            info = decoder.info
        timings["handler_total"] = (time.perf_counter() - started) * 1000
        answer = people_answer(contract=self.contract, runtime=self.model.name,
                               person_runtime=self.finder.name if self.finder is not None else None,
                               options=request.options,
                               keyframes=answers, video=info, frames_decoded=frames_decoded,
                               decode_errors=decode_errors, timings=timings,
                               warnings=[*warnings, *(w for a in answers for w in a.warnings)])
        body = people_reply(request.parsed, self.contract, answer, answers)
        return stream_line(body) if streaming else body

    def _keyframe(self, request: PeopleRequest, keyframe_window: KeyframeWindow, timings: Dict[str, float]) -> KeyframeAnswer:
        """The persons of one keyframe: given boxes (checked against the frame) or found ones."""
        warnings: List[str] = []
        scores: Optional[torch.Tensor] = None
        if request.options.boxes is not None:
            given = request.options.boxes[keyframe_window.keyframe.time]
            working = keyframe_window.mapping.to_working(given, where=f"the box at {keyframe_window.keyframe.time:g} s, number")
            shown = torch.tensor(keyframe_window.mapping.clip_display(given), dtype=torch.float32).reshape(-1, 4)
        else:
            assert self.finder is not None
            found, scores = _timed(lambda: self.finder.find(keyframe_window.frame_at_keyframe), timings, "persons")
            limit = self.options.max_persons_per_keyframe
            if found.shape[0] > limit:
                warnings.append(f"{found.shape[0]} persons found at {keyframe_window.keyframe.time:g} s; "
                                f"the {limit} most confident are answered (max_persons_per_keyframe)")
                found, scores = found[:limit], scores[:limit]
            working, shown = keyframe_window.place_found(found)
        scored = score_keyframe(self.model, keyframe_window.frames, working)
        timings["preprocess"] += scored.preprocess_ms
        timings["inference"] += scored.inference_ms
        return KeyframeAnswer(keyframe_window.keyframe, shown, scores, scored.probabilities, warnings)


def _timed(call: Callable[[], Any], timings: Dict[str, float], key: str) -> Any:
    started = time.perf_counter()
    try:
        return call()
    finally:
        timings[key] += (time.perf_counter() - started) * 1000
