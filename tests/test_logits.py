"""``output=logits``: the classifier's raw scores, per video and per timeline window.

Rendering is checked with known logits (JSON, timeline, KServe v2 tensor); the served values with
the real handler in-process on the exported .pt, against the scripted module run on the very views
the handler fed its runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch

from handler.request_options import resolve_request_options

from handler.serve_settings import ServeOptions
from handler.protocol import parse_row
from handler.render import ModelInfo, reply, video_answer
from handler.run import WindowScores
from handler.runtime_base import Outputs

CLIP = "tv__WUzgd7C1pWA.mp4"  # 340x256, 10.9 s: three crops see different parts of the frame
# The handler's runtime is TorchScript frozen and optimized for inference: conv-BN folding moves
# logits by ~1e-5 against the scripted module as saved.
LOGIT_TOLERANCE = 1e-4

MODEL = ModelInfo("slowfast_r50", ["a", "b", "c"], "random", "torchscript-fp32", 2)
VIDEO = SimpleNamespace(container="mp4", codec="h264", width=32, height=32, duration=6.0, rotation=0)


def scores(logits: List[List[float]]) -> List[WindowScores]:
    """One window per row of ``logits`` (its probabilities their softmax)."""
    return [WindowScores(i, Outputs(logits=torch.tensor(row), probabilities=torch.softmax(torch.tensor(row), 0),
                                    embedding=torch.zeros(2)), 1, 0.0, 0.0)
            for i, row in enumerate(logits)]


def answer(given: Dict[str, str], logits: List[List[float]]) -> Dict:
    options = resolve_request_options(given, ServeOptions(), 3)
    windows = [(2.0 * i, 2.0 * i + 2.1333) for i in range(len(logits))]
    return video_answer(model=MODEL, options=options, windows=windows, scores=scores(logits), video=VIDEO,
                        frames_decoded=1, decode_ms=0.0, decode_errors=0, warnings=[], batch_size=1, total_ms=0.0)


# -- rendering, with known logits ------------------------------------------------------------


def test_the_answer_holds_the_logits_in_label_order_and_nothing_else():
    body = answer({"output": "logits"}, [[1.5, -2.25, 0.1]])
    assert body["logits"]["activation"] == "softmax" and "predictions" not in body and "embedding" not in body
    # float32 values come back exactly (9 significant digits).
    assert torch.equal(torch.tensor(body["logits"]["values"], dtype=torch.float32), torch.tensor([1.5, -2.25, 0.1]))


def test_a_timeline_entry_carries_its_windows_logits_and_the_video_their_mean():
    rows = [[1.0, 2.0, 3.0], [3.0, -2.0, 0.5]]
    body = answer({"output": "logits", "timeline": "true"}, rows)
    assert [entry["logits"] for entry in body["timeline"]] == rows
    assert body["logits"]["values"] == [2.0, 0.0, 1.75]
    assert all("predictions" not in entry for entry in body["timeline"])


def test_kserve_v2_carries_an_fp32_logits_tensor_videos_by_classes():
    options = resolve_request_options({"output": "logits"}, ServeOptions(), 3)
    answers = [answer({"output": "logits"}, [[1.0, 2.0, 3.0]]), answer({"output": "logits"}, [[-1.0, 0.5, 4.0]])]
    b64 = "AAAA"
    parsed = parse_row({"body": json.dumps({"inputs": [{"name": "v", "datatype": "BYTES", "data": [b64, b64]}]}).encode()})
    outputs = reply(parsed, MODEL, options, answers)["outputs"]
    assert outputs == [{"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [1.0, 2.0, 3.0, -1.0, 0.5, 4.0]}]


def test_the_client_sends_output_logits_and_refuses_an_npy_of_it():
    from client.cli import build_parser, check_usage
    from client.options import request_fields

    args = build_parser().parse_args(["clip.mp4", "--output", "logits"])
    assert request_fields(args) == {"topk": "5", "output": "logits"}
    assert check_usage(args, single=True) is None
    npy = build_parser().parse_args(["clip.mp4", "--output", "logits", "--out", "x.npy"])
    assert "holds embeddings" in check_usage(npy, single=True)
    assert "contradict" in check_usage(build_parser().parse_args(["clip.mp4", "--output", "logits", "--embedding"]),
                                       single=True)


def test_the_client_prints_an_answer_it_has_no_table_for_as_json(capsys, tmp_path: Path):
    from client.cli import build_parser
    from client.predict import run_one
    from client.transport import Answer

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not looked at")
    body = {"logits": {"activation": "softmax", "values": [1.0, 2.0]}, "model": "m"}
    sent = []
    transport = SimpleNamespace(send=lambda data, fields: sent.append(fields) or Answer(body=body, attempts=1))
    assert run_one(build_parser().parse_args([str(video), "--output", "logits"]), transport) == 0
    assert json.loads(capsys.readouterr().out) == body and sent[0]["output"] == "logits"


# -- the real handler, in-process, on the exported model ---------------------------------------


@pytest.fixture(scope="module")
def inproc(built):
    from harness.inproc import InProcessHandler

    # Compared with the scripted module's fp32 logits: TorchScript fp32 on every CPU.
    return InProcessHandler(built["pt"], handler={"cpu_runtime": "torchscript", "warmup": False})


@pytest.fixture(scope="module")
def scripted(built):
    from export.save import load_with_contract

    module, _ = load_with_contract(built["pt"])
    return module


def scripted_logits(module, captured: List[List[torch.Tensor]]) -> torch.Tensor:
    """(views, classes): the scripted module's logits on each view the handler ran, in order."""
    with torch.inference_mode():
        return torch.cat([module.forward_with_embedding(inputs)[0] for inputs in captured])


def test_the_logits_answer_is_the_models_logits_averaged_over_the_views(inproc, scripted, shared_videos: Path):
    body = inproc.handle((shared_videos / CLIP).read_bytes(), {"output": "logits", "crops": "3"}, capture=True)
    views = scripted_logits(scripted, inproc.last_inputs)
    assert views.shape == (3, len(inproc.contract.labels))
    served = torch.tensor(body["logits"]["values"])
    assert torch.allclose(served, views.mean(0), atol=LOGIT_TOLERANCE, rtol=0)
    # ... and not any one crop's (the crops differ by more than the tolerance: the mean tells them apart).
    assert min(float((served - view).abs().max()) for view in views) > 10 * LOGIT_TOLERANCE
    assert body["views"] == 3 and "predictions" not in body


def test_the_softmax_of_one_views_logits_is_its_labels_answer(inproc, shared_videos: Path):
    video = (shared_videos / CLIP).read_bytes()
    logits = inproc.handle(video, {"output": "logits"})["logits"]
    classes = len(inproc.contract.labels)
    labels = inproc.handle(video, {"topk": str(classes)})["predictions"]
    probabilities = torch.zeros(classes)
    probabilities[[p["index"] for p in labels]] = torch.tensor([p["probability"] for p in labels])
    assert logits["activation"] == "softmax" and len(logits["values"]) == classes
    assert torch.allclose(torch.softmax(torch.tensor(logits["values"]), 0), probabilities, atol=1e-7, rtol=1e-5)


def test_each_timeline_window_carries_the_models_logits_of_that_window(inproc, scripted, shared_videos: Path):
    given = {"output": "logits", "timeline": "true", "stride": "2", "end": "7"}
    body = inproc.handle((shared_videos / CLIP).read_bytes(), given, capture=True)
    views = scripted_logits(scripted, inproc.last_inputs)
    entries = body["timeline"]
    assert len(entries) == len(views) == 3
    windows = torch.tensor([entry["logits"] for entry in entries])
    assert torch.allclose(windows, views, atol=LOGIT_TOLERANCE, rtol=0)
    assert float((windows[0] - windows[1]).abs().max()) > 10 * LOGIT_TOLERANCE  # windows told apart
    assert torch.allclose(torch.tensor(body["logits"]["values"]), windows.mean(0), atol=1e-6, rtol=0)
