"""A stand-in KServe InferenceService for client tests: tests/fake_torchserve.py's scripted server
answering ``POST /v1/models/<model>:predict`` and ``POST /v2/models/<model>/infer``.

The envelope is read and the reply written by the handler's own code (handler.protocol.parse_row,
handler.request_options.resolve_request_options, handler.render.reply), so the client meets exactly the
wire format the server speaks; only the model is fake: ``answer_for(video, options)`` gives one
video's answer (the /predictions dict). ``before(request)`` may answer first (auth, errors, retries).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, Optional

from handler.errors import RequestError
from handler.protocol import parse_row
from handler.render import ModelInfo, reply
from handler.request_options import resolve_request_options
from handler.serve_settings import ServeOptions
from tests.fake_torchserve import FakeTorchServe, Reply, Request

LABELS = ("texting", "juggling balls", "riding mule", "yawning", "abseiling")
PROBABILITIES = (0.4, 0.3, 0.15, 0.1, 0.05)
WINDOW = [0.0, 2.1333]
WEIGHTS = "random weights, seed 0 (predictions are meaningless)"
ROUTE = re.compile(r"^/(v1)/models/([^/:]+):predict$|^/(v2)/models/([^/]+)/infer$")


def embedding_for(video: bytes) -> list:
    """A stand-in embedding that identifies the video it came from."""
    return [float(len(video)), float(video[-1]), 0.5]


def default_answer(video: bytes, options: Any) -> Dict[str, Any]:
    """The /predictions answer of a fake model with LABELS, an embedding of 3 and logits of 5."""
    answer: Dict[str, Any] = {}
    if "labels" in options.kinds:
        answer["predictions"] = [{"label": label, "index": i, "probability": p}
                                 for i, (label, p) in enumerate(zip(LABELS, PROBABILITIES))][: options.topk]
    if "embedding" in options.kinds:
        answer["embedding"] = {"model": "m", "dim": 3, "normalized": options.normalize, "values": embedding_for(video)}
    if "logits" in options.kinds:
        answer["logits"] = {"activation": "softmax", "values": [2.0, 1.5, 0.5, 0.0, -1.0]}
    answer.update(windows=[WINDOW], model="m", weights=WEIGHTS, runtime="fake")
    return answer


class FakeKServe(FakeTorchServe):
    def __init__(self, answer_for: Callable[[bytes, Any], Dict[str, Any]] = default_answer,
                 before: Optional[Callable[[Request], Optional[Reply]]] = None) -> None:
        self.answer_for, self.before = answer_for, before
        super().__init__(self._answer)

    def _answer(self, request: Request) -> Reply:
        early = self.before(request) if self.before else None
        if early is not None:
            return early
        route = ROUTE.match(request.path)
        if route is None:
            return Reply(404, {"error": f"no route {request.path}"})
        model = route.group(2) or route.group(4)
        try:
            body = json.loads(request.body)
            parsed = parse_row({"body": body}, request.headers)
            options = resolve_request_options(parsed.options, ServeOptions(), num_classes=len(LABELS))
            answers = [self.answer_for(video, options) for video in parsed.videos]
        except RequestError as exc:
            return Reply(exc.status, exc.to_body())
        info = ModelInfo(name=model, labels=LABELS, weights=WEIGHTS, runtime="fake", embedding_dim=3)
        return Reply(200, reply(parsed, info, options, answers))
