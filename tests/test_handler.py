"""The handler in-process, driven through a fake TorchServe context (no Java server).

Checks the batch contract: one answer per request in order, each bad request gets its own 4xx
status while the others in the same batch are answered normally, and all views of a batch go
through the model.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import shutil
from http import HTTPStatus
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

from handler.runtime_base import RuntimeUnavailable
from handler.slowfast_handler import SlowFastHandler
from harness.context import FakeContext, record_line
from harness.synth import make_video
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
    instance = SlowFastHandler(send_line=record_line)
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


def test_a_batch_with_bad_requests_leaves_no_reference_cycles(handler, model_dir, shared_videos):
    """Each bad upload's error keeps its traceback, whose frames hold the upload and the container,
    in reference cycles: the batch's end collects them (handler/heap.py), not a full collection
    minutes later. Automatic collection is off so that only the handler's can pass this."""
    good = (shared_videos / "ii__realshort.mp4").read_bytes()
    rows = [{"body": good}, {"body": b"garbage" * 100}, {"body": b"ffconcat version 1.0\nfile 'x.mp4'\n"},
            {"body": good[:2048]}]
    gc.disable()
    try:
        (responses, context) = handle(handler, model_dir, rows)
        assert sorted(context.statuses) == [1, 2, 3]
        del responses, context
        assert gc.collect() == 0
    finally:
        gc.enable()


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


class PoisonedRuntime:
    """The handler's runtime with a larger micro-batch, except that a forward holding a view of a
    flat (one-colour) video raises ``error``: a fault tied to one request's input, met in a
    micro-batch shared with other requests. ``forwards``: (views, flat views) of each forward tried."""

    def __init__(self, real: Any, error: BaseException, micro_batch: int = 4) -> None:
        self.real, self.error, self.micro_batch = real, error, micro_batch
        self.contract, self.name = real.contract, real.name
        self.forwards: List[Tuple[int, int]] = []

    def infer(self, pathways: List[torch.Tensor]) -> Any:
        flat = pathways[1].flatten(1).std(1) < 1e-3  # per view: a flat video normalizes to one value
        self.forwards.append((int(flat.numel()), int(flat.sum())))
        if flat.any():
            raise self.error
        return self.real.infer(pathways)


def _flat_video() -> bytes:
    return make_video(frames=45, width=160, height=96, frame_source=lambda _: np.full((96, 160, 3), 128, np.uint8),
                      options={"preset": "ultrafast"})


@pytest.mark.parametrize("error, status, reason", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"), 503, "out_of_memory"),
    (RuntimeError("CUDA error: out of memory (simulated)"), 503, "out_of_memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory (simulated)"),
     503, "out_of_memory"),
    (RuntimeError("Exception from src/plugins/intel_cpu/src/cpu_memory.cpp:257: Failed to allocate 1073741824 bytes "
                  "of memory (simulated OpenVINO)"), 503, "out_of_memory"),
    (MemoryError(), 503, "out_of_memory"),
    (RuntimeUnavailable("reloading its model (simulated)"), 503, "model_unavailable"),
    (ValueError("a preprocessing bug (simulated)"), 500, "internal_error"),
    (RuntimeError("Expected 5-dimensional input (simulated)"), 500, "internal_error"),
])
def test_a_failed_forward_fails_its_request_only_503_if_it_passes_else_500_with_an_error_id(
    handler, model_dir, shared_videos, caplog, error, status, reason,
):
    good = (shared_videos / "ii__realshort.mp4").read_bytes()
    poisoned = copy.copy(handler)
    poisoned.runtime = PoisonedRuntime(handler.runtime, error)
    rows = [{"body": _flat_video()}, {"body": good}, {"body": b""}]
    with caplog.at_level(logging.WARNING, logger="handler.failures"):
        (failed, answered, empty), context = handle(poisoned, model_dir, rows, {1: {"crops": "3"}})
    # The flat video's view and the good video's 3 shared a micro-batch of 4, then ran apart.
    assert poisoned.runtime.forwards[0] == (4, 1) and (3, 0) in poisoned.runtime.forwards
    assert context.statuses == {0: (status, HTTPStatus(status).phrase), 2: (400, "Bad Request")}
    assert failed["reason"] == reason and empty["reason"] == "empty_body"
    # The operator finds the failure from its answer: the id is in the log line with the traceback.
    error_id = failed["error_id"]
    assert len(error_id) == 12 and error_id in failed["message"]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info and logged[0].exc_info[1] is error
    assert ("retry shortly" in failed["message"]) == (status == 503)
    # The other request of the batch is answered as if alone (micro-batch 1 both times).
    (alone,), _ = handle(handler, model_dir, [{"body": good}], {0: {"crops": "3"}})
    assert answered["views"] == alone["views"] == 3
    assert [p["label"] for p in answered["predictions"]] == [p["label"] for p in alone["predictions"]]
    assert [p["probability"] for p in answered["predictions"]] == pytest.approx(
        [p["probability"] for p in alone["predictions"]], abs=1e-6)


def test_a_failure_outside_any_window_fails_the_unfinished_requests_with_one_error_id(handler, model_dir, shared_videos,
                                                                                       monkeypatch, caplog):
    from handler import slowfast_handler as module

    def broken(*args: Any, **kwargs: Any):
        raise KeyError("a bug in the run itself (simulated)")

    monkeypatch.setattr(module, "run_windows", broken)
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    with caplog.at_level(logging.WARNING, logger="handler.failures"):
        responses, context = handle(handler, model_dir, [{"body": video}, {"body": video}, {"body": b""}])
    assert [code for code, _ in (context.statuses[i] for i in range(3))] == [500, 500, 400]
    assert responses[0]["reason"] == "internal_error" and responses[0]["error_id"] == responses[1]["error_id"]
    assert sum(responses[0]["error_id"] in r.getMessage() for r in caplog.records) == 1


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


def test_a_timeline_line_that_cannot_be_sent_ends_only_that_request(handler, model_dir, shared_videos):
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    sent: List[int] = []

    def send(index: int, line: str, context: Any) -> None:
        if index == 0:
            raise BrokenPipeError("the client of request 0 went away (simulated)")
        sent.append(index)
        record_line(index, line, context)

    sender = copy.copy(handler)
    sender.send_line = send
    headers = {i: {"timeline": "true", "stream": "true", "end": "4"} for i in (0, 1)}
    (failed, answered), context = handle(sender, model_dir, [{"body": video}, {"body": video}], headers)
    assert context.statuses == {0: (500, "Internal Server Error")}
    assert json.loads(failed)["reason"] == "internal_error" and json.loads(failed)["error_id"]
    assert sent and set(sent) == {1} and len(json.loads(answered)["timeline"]) == len(context.streamed[1])


def test_the_default_line_sender_is_torchserves_intermediate_response(model_dir, monkeypatch):
    from handler import slowfast_handler as module

    calls = []
    monkeypatch.setattr(module, "send_intermediate_predict_response", lambda *args: calls.append(args))
    assert SlowFastHandler().send_line is module.send_to_torchserve
    context = FakeContext(model_dir, 2)
    module.send_to_torchserve(1, "{}\n", context)
    assert calls == [({1: "{}\n"}, {1: "req-1"}, "window", 200, context)]


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
