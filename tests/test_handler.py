"""The handler in-process, driven through a fake TorchServe context (no Java server).

Checks the batch contract: one answer per request in order, each bad request gets its own 4xx
status while the others in the same batch are answered normally, and all views of a batch go
through the model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest

from handler.slowfast_handler import SlowFastHandler
from harness.context import FakeContext
from tests.edge_cases import build


@pytest.fixture(scope="module")
def model_dir(built, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model_dir")
    try:
        os.link(built["pt"], directory / built["pt"].name)
    except OSError:
        shutil.copy2(built["pt"], directory / built["pt"].name)
    return directory


@pytest.fixture(scope="module")
def handler(model_dir) -> SlowFastHandler:
    instance = SlowFastHandler()
    instance.initialize(FakeContext(model_dir, 1))
    return instance


def handle(handler: SlowFastHandler, model_dir: Path, rows: List[Dict[str, Any]], headers=None):
    context = FakeContext(model_dir, len(rows))
    context.headers = headers or {}
    return handler.handle(rows, context), context


def test_bad_requests_get_their_own_status_and_the_rest_are_answered(handler, model_dir, shared_videos, contract):
    good = (shared_videos / "ii__realshort.mp4").read_bytes()
    rows = [{"body": good}, {"body": b"garbage" * 100}, {"body": build("png_still")}, {"body": good}]
    responses, context = handle(handler, model_dir, rows)
    assert len(responses) == 4
    assert set(context.statuses) == {1, 2}
    assert context.statuses[1][0] == 422 and responses[1]["reason"] == "not_a_video"
    assert context.statuses[2][0] == 415 and responses[2]["reason"] == "still_image"
    for index in (0, 3):
        predictions = responses[index]["predictions"]
        assert len(predictions) == 5 and responses[index]["model"] == contract.model_name
    # The same video in one batch gives the same answer.
    assert responses[0]["predictions"] == responses[3]["predictions"]


def test_batched_answers_equal_single_answers(handler, model_dir, shared_videos):
    names = ["tv__WUzgd7C1pWA.mp4", "ii__realshort.mp4", "mp__big_buck_bunny_432_433.webm"]
    videos = [(shared_videos / n).read_bytes() for n in names]
    together, _ = handle(handler, model_dir, [{"body": v} for v in videos])
    for video, batched in zip(videos, together):
        (alone,), _ = handle(handler, model_dir, [{"body": video}])
        assert [p["index"] for p in alone["predictions"]] == [p["index"] for p in batched["predictions"]]
        for a, b in zip(alone["predictions"], batched["predictions"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_options_topk_clips_crops_and_response_shape(handler, model_dir, shared_videos, contract):
    video = (shared_videos / "tv__v_SoccerJuggling_g23_c01.avi").read_bytes()
    (result,), context = handle(handler, model_dir, [{"data": video, "topk": str(contract.num_classes), "clips": "2"}], {0: {"X-Crops": "3"}})
    assert not context.statuses, result
    probabilities = [p["probability"] for p in result["predictions"]]
    assert len(probabilities) == contract.num_classes and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert {p["label"] for p in result["predictions"]} == set(contract.labels)
    assert result["views"] == 6 and len(result["windows"]) == 2
    (start_a, end_a), (start_b, end_b) = result["windows"]
    assert end_a - start_a == pytest.approx(contract.window_seconds, abs=1e-3) and start_b > end_a - 1e-3
    assert set(result["timings_ms"]) >= {"decode", "preprocess", "inference"}


def test_invalid_option_is_a_400_for_that_request_only(handler, model_dir, shared_videos):
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    responses, context = handle(handler, model_dir, [{"data": video, "topk": "0"}, {"body": video}])
    assert context.statuses == {0: (400, "Bad Request")}
    assert "topk" in responses[0]["message"] and "predictions" in responses[1]


def test_failure_in_the_forward_fails_only_that_batch_with_503(handler, model_dir, shared_videos, monkeypatch):
    def broken(_pathways):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(handler.runtime, "infer", broken)
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    responses, context = handle(handler, model_dir, [{"body": video}, {"body": b""}])
    assert context.statuses[0][0] == 503 and context.statuses[1][0] == 400
    assert responses[0]["reason"] == "inference_failed"


def test_micro_batches_bound_the_forward_size(model_dir, shared_videos, monkeypatch):
    config = {"minWorkers": 1, "handler": {"warmup": False, "micro_batch_cpu": 2, "optimize": False}}
    instance = SlowFastHandler()
    instance.initialize(FakeContext(model_dir, 1, config))
    seen: List[int] = []
    real = instance.runtime.infer

    def spy(pathways):
        seen.append(pathways[1].shape[0])
        return real(pathways)

    monkeypatch.setattr(instance.runtime, "infer", spy)
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    context = FakeContext(model_dir, 2)
    context.headers = {0: {"crops": "3"}, 1: {"crops": "1"}}
    instance.handle([{"body": video}, {"body": video}], context)
    assert seen == [2, 2] and sum(seen) == 4  # 3 + 1 views in chunks of at most 2


def test_streamed_timeline_sends_a_line_per_window_then_the_full_answer(handler, model_dir, shared_videos, contract):
    import json

    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    headers = {0: {"timeline": "true", "stream": "true", "output": "both", "start": "2", "end": "9"}}
    (final,), context = handle(handler, model_dir, [{"body": video}], headers)
    assert isinstance(final, str) and final.endswith("\n") and not context.statuses
    answer = json.loads(final)
    lines = [json.loads(line) for line in context.streamed[0]]
    assert [line["window"]["index"] for line in lines] == [0, 1, 2] and lines[0]["window"]["of"] == 3
    assert [line["window"]["start"] for line in lines] == [entry["start"] for entry in answer["timeline"]]
    assert answer["timeline"][0]["start"] == 2.0 and answer["timeline"][-1]["end"] <= 9.0
    assert len(answer["timeline"][1]["embedding"]) == answer["embedding"]["dim"] == contract.embedding_size
    assert lines[1]["window"]["predictions"] == answer["timeline"][1]["predictions"]


def test_request_over_the_budget_is_refused_before_decoding(handler, model_dir, monkeypatch):
    from handler import slowfast_handler as module

    opened = []
    monkeypatch.setattr(module, "VideoDecoder", lambda *a, **k: opened.append(a))
    rows = [{"body": json.dumps({"instances": [{"data": "AAAA"}] * 12, "parameters": {"clips": 10, "crops": 3}}).encode()}]
    (response,), context = handle(handler, model_dir, rows)
    assert context.statuses[0][0] == 413 and response["reason"] == "over_budget" and not opened
    assert "360 views" in response["message"]


def test_handler_module_defines_one_class_as_torchserve_requires():
    # TorchServe's model_loader refuses a handler module with several classes (the worker dies).
    import inspect

    from handler import slowfast_handler as module

    defined = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    assert defined == [SlowFastHandler]


def test_videos_of_one_request_share_one_decoding_budget_and_requests_do_not(handler, model_dir, shared_videos, monkeypatch):
    import base64

    from handler import slowfast_handler as module

    budgets = []
    real = module.VideoDecoder

    def spy(data, limits, short_side, budget=None):
        budgets.append(budget)
        return real(data, limits, short_side, budget=budget)

    monkeypatch.setattr(module, "VideoDecoder", spy)
    clip = base64.b64encode((shared_videos / "ii__realshort.mp4").read_bytes()).decode()
    two = {"body": json.dumps({"instances": [{"data": clip}, {"data": clip}]}).encode()}
    (answer, other), context = handle(handler, model_dir, [two, dict(two)])
    assert not context.statuses and len(answer["predictions"]) == 2
    assert len(budgets) == 4 and budgets[0] is budgets[1] and budgets[2] is budgets[3]
    assert budgets[0] is not budgets[2] and budgets[0].seconds == handler.options.max_decode_seconds
    # Only time inside the decoders was counted: far less than the request took end to end.
    assert 0 < budgets[0].spent < sum(v["timings_ms"]["handler_total"] for v in answer["predictions"]) / 1000


def test_a_timeline_line_that_cannot_be_sent_ends_only_that_request(handler, model_dir, shared_videos, monkeypatch):
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    sent: List[int] = []
    real = handler._send_line

    def send(index: int, line: str, context: Any) -> None:
        if index == 0:
            raise BrokenPipeError("the client of request 0 went away (simulated)")
        sent.append(index)
        real(index, line, context)

    monkeypatch.setattr(handler, "_send_line", send)
    headers = {i: {"timeline": "true", "stream": "true", "end": "4"} for i in (0, 1)}
    (failed, answered), context = handle(handler, model_dir, [{"body": video}, {"body": video}], headers)
    assert context.statuses == {0: (500, "Internal Server Error")}
    assert json.loads(failed)["reason"] == "internal_error"
    assert sent and set(sent) == {1} and len(json.loads(answered)["timeline"]) == len(context.streamed[1])


def test_an_answer_that_cannot_be_rendered_ends_only_that_request(handler, model_dir, shared_videos, monkeypatch):
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    real = handler._answer

    def answer(request: Any, *args: Any) -> Dict[str, Any]:
        if request.index == 0:
            raise ValueError("a rendering bug (simulated)")
        return real(request, *args)

    monkeypatch.setattr(handler, "_answer", answer)
    (failed, answered), context = handle(handler, model_dir, [{"body": video}, {"body": video}])
    assert context.statuses == {0: (500, "Internal Server Error")}
    assert failed["reason"] == "internal_error" and "render" in failed["message"]
    assert answered["predictions"] and answered["model"] == handler.model.name


def test_a_context_without_the_header_api_fails_loudly_not_without_options(model_dir, handler):
    class OldContext(FakeContext):
        def get_all_request_header(self, idx: int) -> Dict[str, str]:
            raise AttributeError("'Context' object has no attribute '_request_processor'")

    context = OldContext(model_dir, 1)
    (response,) = handler.handle([{"body": build("png_still")}], context)
    assert context.statuses[0][0] == 500 and response["reason"] == "internal_error"
