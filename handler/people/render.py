"""An action detector's answer: per keyframe, each person's box, detector score and actions.

Plain JSON (and KServe v1, which wraps it in ``predictions``)::

    {"keyframes": [{"time": 2.0, "window": [1.5, 2.5], "persons": [
        {"box": [x1, y1, x2, y2], "score": 0.98, "actions": [{"label", "index", "probability"}, ...]}]}],
     "boxes_from": "request" | "detector", "model", "weights", "runtime", "person_detector", "video", "timings_ms"}

Boxes are in the video's upright pixels; ``score`` is the person detector's (absent for boxes the
request gave); ``person_detector`` describes the packed person detector (architecture, weights,
threshold, the ``runtime`` that ran it), null where the worker has none. KServe v2 answers with
tensors over the P persons of all keyframes, in order: ``boxes`` FP32 [P, 4], ``scores`` FP32 [P]
(-1 for given boxes), ``keyframe_times`` FP32 [P], ``probabilities`` FP32 [P, classes] (every
action, in label order).

Streamed (``stream``: plain requests only), a JSON line per keyframe as it is answered,
``{"keyframe": {"index", "of", "time", "window", "persons"}}`` (``keyframe_line``), then the full
answer above; a failure after the first line ends the stream with the error object instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from handler.contract import PreprocessContract
from handler.people.plan import Keyframe
from handler.people.request import PeopleOptions
from handler.protocol import KSERVE_V1, KSERVE_V2, KSERVE_V2_TENSOR, ParsedRequest
from handler.render import MS_PLACES, SECONDS_PLACES, VideoFacts, stream_line, top_predictions

GIVEN_BOX_SCORE = -1.0  # the KServe v2 ``scores`` entry of a box the request gave


@dataclass
class KeyframeAnswer:
    """One keyframe's persons: boxes (N, 4) upright video pixels, detector scores (N,) or None
    (given boxes), probabilities (N, classes)."""

    keyframe: Keyframe
    boxes: torch.Tensor
    scores: Optional[torch.Tensor]
    probabilities: torch.Tensor
    warnings: List[str] = field(default_factory=list)


def _box(values: Sequence[float]) -> List[float]:
    return [round(float(v), 3) for v in values]


def keyframe_json(answer: KeyframeAnswer, contract: PreprocessContract, options: PeopleOptions) -> Dict[str, Any]:
    k = options.topk if options.topk is not None else contract.num_classes
    persons = []
    for index in range(answer.boxes.shape[0]):
        person: Dict[str, Any] = {"box": _box(answer.boxes[index].tolist())}
        if answer.scores is not None:
            person["score"] = round(float(answer.scores[index]), 6)
        person["actions"] = top_predictions(answer.probabilities[index].tolist(), contract.labels, k, options.threshold)
        persons.append(person)
    window = answer.keyframe.window
    return {"time": round(answer.keyframe.time, SECONDS_PLACES),
            "window": [round(window[0], SECONDS_PLACES), round(window[1], SECONDS_PLACES)], "persons": persons}


def keyframe_line(answer: KeyframeAnswer, contract: PreprocessContract, options: PeopleOptions, index: int,
                  count: int) -> str:
    """The streamed line of one answered keyframe (``index`` of ``count``, in time order)."""
    return stream_line({"keyframe": {"index": index, "of": count, **keyframe_json(answer, contract, options)}})


def people_answer(*, contract: PreprocessContract, runtime: str, options: PeopleOptions,
                  keyframes: List[KeyframeAnswer], video: VideoFacts, frames_decoded: int, decode_errors: int,
                  timings: Dict[str, float], warnings: Sequence[str],
                  person_runtime: Optional[str] = None) -> Dict[str, Any]:
    """``runtime``: what ran the action detector; ``person_runtime``: what ran the person detector
    (None: the worker has none loaded)."""
    detector = contract.detection.person_detector if contract.detection else None
    answer: Dict[str, Any] = {
        "keyframes": [keyframe_json(k, contract, options) for k in keyframes],
        "boxes_from": "request" if options.boxes is not None else "detector",
        "threshold": options.threshold,
        "model": contract.model_name,
        "weights": contract.weights,
        "runtime": runtime,
        "person_detector": None if detector is None else {
            "architecture": detector.architecture, "weights": detector.weights, "threshold": detector.score_threshold,
            **({"runtime": person_runtime} if person_runtime is not None else {})},
        "video": {
            "duration_s": round(video.duration, SECONDS_PLACES), "width": video.width, "height": video.height,
            "rotation": video.rotation, "codec": video.codec, "container": video.container,
            "frames_decoded": frames_decoded, "decode_errors": decode_errors,
        },
        "timings_ms": {name: round(value, MS_PLACES) for name, value in timings.items()},
    }
    if warnings:
        answer["warnings"] = list(warnings)
    return answer


def _tensors(keyframes: List[KeyframeAnswer], classes: int) -> List[Dict[str, Any]]:
    boxes = torch.cat([k.boxes for k in keyframes]) if keyframes else torch.zeros(0, 4)
    scores = torch.cat([k.scores if k.scores is not None else torch.full((k.boxes.shape[0],), GIVEN_BOX_SCORE)
                        for k in keyframes]) if keyframes else torch.zeros(0)
    times = torch.cat([torch.full((k.boxes.shape[0],), k.keyframe.time) for k in keyframes]) if keyframes else torch.zeros(0)
    probabilities = torch.cat([k.probabilities for k in keyframes]) if keyframes else torch.zeros(0, classes)
    persons = int(boxes.shape[0])
    return [
        {"name": "boxes", "datatype": "FP32", "shape": [persons, 4], "data": boxes.flatten().tolist()},
        {"name": "scores", "datatype": "FP32", "shape": [persons], "data": scores.tolist()},
        {"name": "keyframe_times", "datatype": "FP32", "shape": [persons], "data": times.tolist()},
        {"name": "probabilities", "datatype": "FP32", "shape": [persons, classes], "data": probabilities.flatten().tolist()},
    ]


def people_reply(parsed: ParsedRequest, contract: PreprocessContract, answer: Dict[str, Any],
                 keyframes: List[KeyframeAnswer]) -> Any:
    """The reply body in the request's wire format."""
    if parsed.protocol == KSERVE_V2_TENSOR:
        return json.dumps(answer)
    if parsed.protocol == KSERVE_V1:
        return {"predictions": [answer]}
    if parsed.protocol == KSERVE_V2:
        return {"model_name": contract.model_name, "id": parsed.request_id or "",
                "outputs": _tensors(keyframes, contract.num_classes)}
    return answer
