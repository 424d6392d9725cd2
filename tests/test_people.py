"""Person-level actions (issue 27): the detection request path, served in-process as a worker serves it.

The unit tests (options, plan, box geometry) need no model. The served tests share one scripted
action detector with a non-flat checkpoint (tests/checkpoints.py) and a stand-in person detector
(a scripted module answering fixed boxes in torchvision's output format: the real Faster R-CNN
with random weights finds nobody, and its trained weights cannot be fetched here); building them
costs ~1 min on 2 loaded cores. The served scores are compared with pytorchvideo's own pipeline:
the hub network and the tutorial's ``ava_inference_transform`` (harness/reference.py) within 1e-4.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from handler.errors import RequestError
from handler.serve_settings import ServeOptions
from handler.people.geometry import BoxMapping
from handler.people.plan import window_around, plan_keyframes
from handler.people.request import DEFAULT_THRESHOLD, resolve_people_options
from handler.working_frame import working_geometry

NAME = "slowfast_r50_detection"
SERVE = ServeOptions(max_persons_per_keyframe=3, max_keyframes_per_request=4)
KINETICS = "tv__WUzgd7C1pWA.mp4"  # 340x256, 10.9 s: at the working size already, as the tutorial's clips
ROTATED = "dc__video_90.mov"  # phone footage, 568x320 stored, display-matrix rotation


def detection_contract():
    from export.variants import VARIANTS, contract_for, read_label_file

    variant = VARIANTS[NAME]
    return contract_for(variant, read_label_file(variant.labels_file))


# -- the options (parse) ----------------------------------------------------------------------------


def options(**given):
    return resolve_people_options(given, SERVE, 80)


def test_boxes_come_as_a_map_or_a_list_and_name_the_keyframes():
    by_map = options(boxes=json.dumps({"2": [[1, 2, 30, 40]], "0.5": []}))
    by_list = options(boxes=[{"time": 0.5, "boxes": []}, {"time": 2, "boxes": [[1, 2, 30, 40]]}])
    assert by_map == by_list and list(by_map.boxes) == [0.5, 2.0]
    assert by_map.boxes[2.0] == [(1.0, 2.0, 30.0, 40.0)] and by_map.threshold == DEFAULT_THRESHOLD
    assert options(topk="3").threshold is None and options(topk="3", threshold="0.2").threshold == 0.2
    assert options(keyframes="4, 1.5").keyframes == [1.5, 4.0] and options(keyframes="[1]").keyframes == [1.0]


@pytest.mark.parametrize("given, status, words", [
    ({"boxes": "[1"}, 400, "not valid JSON"),
    ({"boxes": "[" * 200_000}, 400, "nested too deeply"),  # the deepest text the size limit admits
    ({"boxes": "[" * ((1 << 20) + 1)}, 413, "at most"),
    ({"boxes": '{"1": [[0, 0, 10]]}'}, 400, r"\[x1, y1, x2, y2\]"),
    ({"boxes": '{"1": [[0, 0, 10, NaN]]}'}, 400, "finite"),
    ({"boxes": '{"1": [[10, 0, 10, 5]]}'}, 400, "x1 < x2"),
    ({"boxes": '{"1": [[0, 9, 10, 5]]}'}, 400, "y1 < y2"),
    ({"boxes": '{"-1": []}'}, 400, "keyframe time"),
    ({"boxes": json.dumps({"1": [[0, 0, 5, 5]] * 4})}, 413, "at most 3 persons per keyframe"),
    ({"boxes": json.dumps({str(t): [] for t in range(5)})}, 413, "at most 4 per request"),
    ({"keyframes": "1,2,3,4,5"}, 413, "at most 4 per request"),
    ({"keyframes": "1", "stride": "2"}, 400, "exclude each other"),
    ({"start": "1"}, 400, "add stride"),
    ({"clips": "3"}, 400, "clips does not apply"),
    ({"topk": "81"}, 400, "topk"),
    ({"threshold": "2"}, 400, "threshold"),
])
def test_bad_options_are_refused_before_any_decoding(given, status, words):
    with pytest.raises(RequestError, match=words) as caught:
        options(**given)
    assert caught.value.status == status


# -- the keyframes (plan) ---------------------------------------------------------------------------


def test_keyframes_default_to_the_middle_and_windows_sit_around_them():
    contract = detection_contract()
    (middle,) = plan_keyframes(options(), 10.0, contract, SERVE)
    assert (middle.time, middle.window) == (5.0, (4.5, 5.5))
    assert window_around(0.2, 10.0, contract) == (0.0, pytest.approx(0.7))  # cut at the start
    assert window_around(10.0, 10.0, contract) == (9.5, 10.0)  # cut at the end
    strided = plan_keyframes(options(stride="2"), 7.0, contract, SERVE)
    assert [k.time for k in strided] == [0.5, 2.5, 4.5, 6.5]
    with pytest.raises(RequestError, match="5 keyframes; at most 4") as caught:
        plan_keyframes(options(stride="1.5"), 7.0, contract, SERVE)
    assert caught.value.status == 413
    with pytest.raises(RequestError, match="past the video's end") as caught:
        plan_keyframes(options(keyframes="3,12"), 10.0, contract, SERVE)
    assert caught.value.status == 422


# -- box geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [0, 90, 180, 270, -90])
def test_boxes_follow_the_frames_through_rotation_and_scaling(rotation):
    """A box drawn on the upright full-resolution picture lands on the same content in the working
    frame the decoder makes (stored frame -> scaled -> turned by ``rotate_frames``)."""
    from handler.transforms import rotate_frames

    turns = int(round(rotation / 90)) % 4
    upright = np.zeros((480, 720, 3), np.uint8)  # display 720x480
    upright[100:300, 200:260] = 255  # a white person-shaped block: x 200-260, y 100-300
    stored = np.ascontiguousarray(np.rot90(upright, k=-turns))  # what the file holds
    geometry = working_geometry(stored.shape[1], stored.shape[0], rotation=rotation, short_side=256,
                                max_aspect_ratio=4.0)
    scaled = torch.nn.functional.interpolate(torch.from_numpy(stored).permute(2, 0, 1)[None].float(),
                                             size=(geometry.height, geometry.width), mode="bilinear")
    working = rotate_frames(scaled[0].permute(1, 2, 0)[None], rotation)[0]
    mapping = BoxMapping.of(geometry)
    assert mapping.display == (720, 480) and mapping.working == (working.shape[1], working.shape[0])
    x1, y1, x2, y2 = mapping.to_working([(200, 100, 260, 300)])[0].tolist()
    inside = working[round(y1) + 2:round(y2) - 2, round(x1) + 2:round(x2) - 2]
    assert float(inside.mean()) > 250 and float(working.mean()) < 60
    back = mapping.to_display(mapping.to_working([(200.5, 100.25, 260, 300)]))
    assert torch.allclose(back, torch.tensor([[200.5, 100.25, 260, 300]]), atol=1e-3)


def test_boxes_past_the_frame_are_clipped_and_boxes_outside_it_refused():
    mapping = BoxMapping.of(working_geometry(640, 360, rotation=0, short_side=256, max_aspect_ratio=4.0))
    assert mapping.clip_display([(-10, -5, 700, 400)]) == [(0.0, 0.0, 639.0, 359.0)]
    with pytest.raises(RequestError, match="nothing inside the 640x360 frame") as caught:
        mapping.to_working([(1, 1, 5, 5), (650, 10, 700, 20)])
    assert caught.value.status == 422


def test_a_cut_frame_maps_boxes_into_its_central_region():
    """An 8:1 frame is answered from its central 4:1 region: boxes shift by the region's offset."""
    geometry = working_geometry(2048, 256, rotation=0, short_side=256, max_aspect_ratio=4.0)
    mapping = BoxMapping.of(geometry)
    assert mapping.region == (512, 0, 1024, 256) and mapping.working == (1024, 256)
    assert mapping.to_working([(600, 10, 700, 100)])[0].tolist() == [88, 10, 188, 100]


# -- served ---------------------------------------------------------------------------------------


class FixedPersons(torch.nn.Module):
    """torchvision's detection output format with fixed boxes (fractions of the frame): two persons,
    one person under the threshold, one car (label 3) that must not count."""

    def forward(self, images: List[torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        height, width = images[0].shape[-2], images[0].shape[-1]
        fractions = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.55, 0.2, 0.95, 0.8], [0.0, 0.0, 0.3, 0.3], [0.2, 0.2, 0.4, 0.4]])
        boxes = fractions * torch.tensor([width, height, width, height], dtype=torch.float32)
        found = {"boxes": boxes, "labels": torch.tensor([1, 1, 1, 3]), "scores": torch.tensor([0.8, 0.95, 0.5, 0.99])}
        return {}, [found]


@pytest.fixture(scope="module")
def detector_dir(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model dir, eager hub network) for the non-flat action detector and the fixed-persons detector."""
    from export.build import build_variant
    from export.checkpoint import read_state_dict, weights_origin
    from export.save import save_with_contract
    from export.scriptable_detection import script_detector
    from export.variants import get_variant
    from handler.contract import PersonDetector
    from tests.checkpoints import detection_calibration, write_non_flat_detection_checkpoint

    directory = tmp_path_factory.mktemp("people")
    checkpoint = str(write_non_flat_detection_checkpoint(directory / "non_flat_ava.pyth", detection_calibration(shared_videos)))
    eager = build_variant(get_variant(NAME), read_state_dict(checkpoint), checkpoint)
    torch.jit.save(torch.jit.script(FixedPersons()), str(directory / f"{NAME}.persons.pt"))
    persons = PersonDetector(file=f"{NAME}.persons.pt", architecture="fixed boxes (test)", label_index=1,
                             score_threshold=0.75, weights="none")
    contract = detection_contract()
    contract = dataclasses.replace(contract, weights=weights_origin(checkpoint, 0),
                                   detection=dataclasses.replace(contract.detection, person_detector=persons))
    save_with_contract(script_detector(eager), contract, directory / f"{NAME}.pt")
    return directory, eager


class Served:
    """The real handler on a FakeContext, one request per call."""

    def __init__(self, directory: Path, handler_settings: Dict = None) -> None:
        from handler.slowfast_handler import SlowFastHandler
        from harness.context import FakeContext, record_line

        config = {"minWorkers": 1, "handler": {"warmup": False, **(handler_settings or {})}}
        self.context = FakeContext(directory, 1, config, serialized=f"{NAME}.pt")
        self.handler = SlowFastHandler(send_line=record_line)  # streamed lines: context.streamed[0]
        self.handler.initialize(self.context)

    def __call__(self, video: bytes, headers: Dict[str, str] = None, row: Dict = None):
        self.context.start_batch([dict(headers or {})])
        body = self.handler.handle([{"body": bytearray(video), **(row or {})}], self.context)[0]
        return self.context.statuses.get(0, (200, ""))[0], body


# The CPU runtime the served tests run (the default one), pinned to fp32: ``cpu_precision: auto``
# would serve bf16 on a CPU with native bf16, which moves the non-flat checkpoint's scores by ~1e-2.
OPENVINO_FP32 = {"cpu_runtime": "openvino", "cpu_precision": "fp32"}


@pytest.fixture(scope="module")
def served(detector_dir):
    return Served(detector_dir[0], OPENVINO_FP32)


@pytest.fixture(scope="module")
def served_torchscript(detector_dir):
    return Served(detector_dir[0], {"cpu_runtime": "torchscript"})


# One box at 2 s, three at 5 s (the last runs past the 340x256 frame): OpenVINO's RoI input is dynamic.
REFERENCE_BOXES = {2.0: [[100, 30, 260, 250]],
                   5.0: [[10.5, 20, 150, 250], [170, 0, 339, 255], [60, 40, 400, 300]]}


@pytest.fixture(scope="module")
def reference_scores(detector_dir, shared_videos) -> Dict[float, torch.Tensor]:
    """Keyframe time -> (N, 80) probabilities of the hub network on the tutorial's
    ``ava_inference_transform`` of the clip (pytorchvideo's EncodedVideo) for ``REFERENCE_BOXES``."""
    from harness.reference import ava_reference_input

    video = (shared_videos / KINETICS).read_bytes()
    expected = {}
    for time, boxes in REFERENCE_BOXES.items():
        pathways, rois = ava_reference_input(video, time, boxes)
        with torch.inference_mode():
            expected[time] = detector_dir[1](pathways, rois)
    return expected


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
# The default CPU runtime in the default run; TorchScript (the fallback: ~1 min more) with `slow`.
@pytest.mark.parametrize("runtime", ["openvino-fp32", pytest.param("torchscript-fp32", marks=pytest.mark.slow)])
def test_served_scores_equal_pytorchvideos_pipeline(runtime, request, reference_scores, shared_videos):
    """Given boxes, the served probabilities on each CPU runtime equal pytorchvideo's pipeline
    within 1e-4, with one box and with several, and differ from box to box (a checkpoint that
    answers every box alike would hide a wrong box). The answer names the runtime."""
    served = request.getfixturevalue("served" if runtime.startswith("openvino") else "served_torchscript")
    video = (shared_videos / KINETICS).read_bytes()
    status, answer = served(video, {"boxes": json.dumps(REFERENCE_BOXES), "threshold": "0"})
    assert status == 200, answer
    assert answer["runtime"] == runtime and answer["boxes_from"] == "request"
    one, several = answer["keyframes"]
    assert several["time"] == 5.0 and several["window"] == [4.5, 5.5] and len(one["persons"]) == 1
    assert [p["box"] for p in several["persons"]] == [[10.5, 20, 150, 250], [170, 0, 339, 255], [60, 40, 339, 255]]
    for keyframe in (one, several):
        assert all("score" not in p for p in keyframe["persons"])
        got = torch.tensor([[a["probability"] for a in sorted(p["actions"], key=lambda a: a["index"])]
                            for p in keyframe["persons"]])
        expected = reference_scores[keyframe["time"]]
        assert got.shape == expected.shape == (len(REFERENCE_BOXES[keyframe["time"]]), 80)
        assert float((got - expected).abs().max()) <= 1e-4
    expected = reference_scores[5.0]
    assert float((expected[0] - expected[1]).abs().max()) > 0.05 and float(expected.std()) > 0.05


@pytest.mark.heavy  # the served detector's file: ~1 min to build (shared with the tests above)
def test_the_detector_falls_back_to_torchscript_saying_why(detector_dir, tmp_path, monkeypatch, caplog):
    """OpenVINO failing to convert (or asked for an int8 model the file lacks) leaves a working
    TorchScript detector and a logged reason, never a dead worker."""
    import handler.people.model as people_model

    def unconvertible(module, contract):
        raise RuntimeError("no converter for this op (test)")

    path = detector_dir[0] / f"{NAME}.pt"
    monkeypatch.setattr(people_model, "convert_detector", unconvertible)
    options = ServeOptions(warmup=False, cpu_runtime="openvino", cpu_precision="fp32")
    with caplog.at_level("WARNING", logger="handler.people.model"):
        detector = people_model.ActionDetector.load(path, options, cache_root=tmp_path / "empty-cache")
    assert detector.name == "torchscript-fp32"
    assert "falling back to TorchScript" in caplog.text and "no converter for this op (test)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="handler.people.model"):
        detector = people_model.ActionDetector.load(path, dataclasses.replace(options, cpu_precision="int8"),
                                                    cache_root=tmp_path / "empty-cache")
    assert detector.name == "torchscript-fp32" and "carries no int8 model" in caplog.text


# ~40 s of CPU forwards (the detector's file is built for the other tests anyway): make test-all;
# tests/test_gpu_check.py keeps the stage's wiring in the default run.
@pytest.mark.slow
def test_the_gpu_checks_people_stage_rehearsed_on_the_cpu(detector_dir):
    """bench/gpu_check.py's people stage on a real detector file, the CPU standing in for the GPU (a
    worker given gpu_id 0 without CUDA runs on the CPU): the code a GPU machine runs first, rehearsed
    here. What it cannot rehearse: CUDA itself (tests/test_people_gpu.py fakes the device)."""
    from bench import gpu_check

    people = gpu_check.people_stage(detector_dir[0] / f"{NAME}.pt", 0, 1, precisions=("fp32",))
    assert "failed" not in people and "skipped" not in people, people
    (measured,) = people["runs"]
    assert measured["device"] == "cpu" and list(measured["keyframe_ms"]) == ["1", "5", "20"]
    # The CPU default runtime (OpenVINO, bf16 where the CPU has it) against TorchScript fp32: close, not equal.
    assert 0 <= measured["max_abs_probability_difference_vs_cpu"] < 0.05
    assert (people["person_detector"]["device"], people["person_detector"]["frame"]) == ("cpu", "1280x720")
    assert len(gpu_check.people_report(people)) == 3


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_found_persons_are_the_detectors_confident_people_in_video_pixels(served, shared_videos):
    video = (shared_videos / KINETICS).read_bytes()
    status, answer = served(video, {"keyframes": "8", "topk": "2"})
    assert status == 200, answer
    assert answer["boxes_from"] == "detector" and answer["person_detector"]["threshold"] == 0.75
    (keyframe,) = answer["keyframes"]
    persons = keyframe["persons"]
    # The two persons above 0.75, most confident first; the 0.5 person and the car are dropped.
    assert [p["score"] for p in persons] == [pytest.approx(0.95), pytest.approx(0.8)]
    assert persons[0]["box"] == pytest.approx([0.55 * 340, 0.2 * 256, 0.95 * 340, 0.8 * 256], abs=1e-3)
    assert all(len(p["actions"]) == 2 for p in persons)


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_kserve_v2_answers_boxes_scores_and_probabilities_as_tensors(served, shared_videos):
    import base64

    video = (shared_videos / KINETICS).read_bytes()
    body = {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(video).decode()]}],
            "parameters": {"boxes": {"3": [], "6": [[10, 10, 50, 90], [60, 60, 200, 200]]}}}
    status, reply = served(b"", row={"body": json.dumps(body).encode()})
    assert status == 200, reply
    tensors = {t["name"]: t for t in reply["outputs"]}
    assert tensors["boxes"]["shape"] == [2, 4] and tensors["probabilities"]["shape"] == [2, 80]
    assert tensors["keyframe_times"]["data"] == [6.0, 6.0] and tensors["scores"]["data"] == [-1.0] * 2
    assert tensors["boxes"]["data"] == [10, 10, 50, 90, 60, 60, 200, 200]


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_a_rotated_phone_video_answers_in_its_upright_pixels(served, shared_videos, manifest):
    """568x320 stored, rotated for display: boxes are in the upright 320x568 picture."""
    assert manifest[ROTATED]["rotation_deg"] != "0"
    video = (shared_videos / ROTATED).read_bytes()
    status, answer = served(video, {"boxes": json.dumps({"0.05": [[10, 300, 310, 560]]})})
    assert status == 200, answer
    assert (answer["video"]["rotation"] % 180, answer["video"]["width"], answer["video"]["height"]) == (90, 568, 320)
    assert answer["keyframes"][0]["persons"][0]["box"] == [10, 300, 310, 560]
    status, answer = served(video, {"boxes": json.dumps({"0.05": [[400, 10, 500, 100]]})})
    assert status == 422 and "nothing inside the 320x568 frame" in answer["message"]
    status, answer = served(video)
    found = answer["keyframes"][0]["persons"][0]["box"]
    # Found on the upright frame at its full resolution (320x568): exact, not through the working frame.
    assert found == pytest.approx([0.55 * 320, 0.2 * 568, 0.95 * 320, 0.8 * 568], abs=1e-3)


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_limits_and_bad_requests_get_their_4xx(served, shared_videos):
    video = (shared_videos / KINETICS).read_bytes()
    for headers, status, words in (
        ({"stride": "0.1"}, 413, "at most 16 per request"),
        ({"boxes": json.dumps({"1": [[0, 0, 5, 5]] * 33})}, 413, "at most 32 persons"),
        ({"output": "embedding"}, 400, "does not apply"),
        ({"keyframes": "20"}, 422, "past the video's end"),
    ):
        got, body = served(video, headers)
        assert (got, body["code"]) == (status, status) and words in body["message"], body


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_without_a_person_detector_a_request_without_boxes_is_told_to_send_them(served, shared_videos, monkeypatch):
    """A model exported where the detector's weights could not be fetched has no finder (the
    exporter's side: tests/test_detection_export.py); boxes are then required, before decoding."""
    monkeypatch.setattr(served.handler.people, "finder", None)
    video = (shared_videos / KINETICS).read_bytes()
    status, body = served(video)
    assert status == 400 and body["reason"] == "boxes_required" and "send the persons' boxes" in body["message"]
    status, body = served(video, {"x-boxes": json.dumps({"5": []})})
    assert status == 200 and body["keyframes"][0]["persons"] == []


def test_the_detection_limits_are_settings_and_must_be_positive():
    from handler.serve_settings import ConfigError

    assert ServeOptions.from_config({"max_persons_per_keyframe": 5}).max_persons_per_keyframe == 5
    with pytest.raises(ConfigError, match="max_persons_per_keyframe"):
        ServeOptions(max_keyframes_per_request=0)


def test_a_worker_that_imports_only_the_handler_can_load_a_scripted_roi_align(tmp_path):
    """A scripted RoI head calls ``torchvision::roi_align``, registered only when torchvision is
    imported: a TorchServe worker imports nothing but the handler, which must bring it."""
    import subprocess
    import sys

    import torchvision

    torch.jit.save(torch.jit.script(torchvision.ops.RoIAlign((7, 7), 1 / 16, 0)), str(tmp_path / "roi.pt"))
    code = ("import torch, sys; import handler.people.service; "
            f"torch.jit.load({str(tmp_path / 'roi.pt')!r}); print('loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert "loaded" in done.stdout, done.stderr[-2000:]


# -- streamed: long videos on the _timeline registration ----------------------------------------


def registered(name: str) -> ServeOptions:
    """The handler settings of the detection archive registered as ``name`` (model-config.yaml)."""
    import yaml

    from handler.serve_settings import registration_settings
    from harness.paths import MODEL_CONFIG

    return ServeOptions.from_config(registration_settings(yaml.safe_load(MODEL_CONFIG.read_text()), name, NAME))


def test_streamed_keyframes_are_bounded_per_registration_and_the_413_says_where_to_go():
    """The main registration streams no more keyframes than it answers (its worker stays free for
    short answers) and names the _timeline one; that one streams 512, with a per-keyframe budget."""
    from handler.people.request import keyframe_limit, streams_longer

    main, timeline = registered(NAME), registered(f"{NAME}_timeline")
    assert (keyframe_limit(False, main), keyframe_limit(True, main), streams_longer(main)) == (16, 16, False)
    assert (keyframe_limit(False, timeline), keyframe_limit(True, timeline), streams_longer(timeline)) == (16, 512, True)
    contract = detection_contract()
    for serve, stream, words in (
        (main, "true", f"at most 16 per streamed request: a stride of 0.633 s or more, or a shorter span, or send it "
                       f"to /predictions/{NAME}_timeline (stream=true)"),
        (timeline, "false", "at most 16 per request: a stride of 0.633 s or more, or a shorter span, or stream it "
                            "(stream=true allows 512 keyframes)"),
    ):
        with pytest.raises(RequestError, match=re.escape(words)) as caught:
            plan_keyframes(resolve_people_options({"stride": "0.5", "stream": stream}, serve, 80), 10.0, contract, serve)
        assert caught.value.status == 413
    strided = plan_keyframes(resolve_people_options({"stride": "0.5", "stream": "true"}, timeline, 80), 10.0, contract, timeline)
    assert len(strided) == 20 and strided[-1].time == 10.0
    many = json.dumps({str(t): [] for t in range(17)})
    assert len(resolve_people_options({"boxes": many, "stream": "1"}, timeline, 80).boxes) == 17
    with pytest.raises(RequestError, match="17 keyframes asked for; at most 16 per streamed request"):
        resolve_people_options({"boxes": many, "stream": "1"}, main, 80)
    with pytest.raises(RequestError, match="stream must be true or false"):
        resolve_people_options({"stream": "maybe"}, main, 80)


def test_a_streamed_answers_budget_is_per_keyframe_on_the_timeline_registration_and_its_422_says_so():
    """Per keyframe only where a stream may run longer than an answer; its 422 names a keyframe, not
    a classifier's timeline window (handler/decoding/budget.py's default)."""
    from handler.people.service import decode_budget

    main, timeline = registered(NAME), registered(f"{NAME}_timeline")
    assert [decode_budget(main, True).per_window, decode_budget(timeline, False).per_window] == [False, False]
    budget = decode_budget(timeline, True)
    assert budget.per_window and budget.seconds == timeline.max_decode_seconds
    budget.spent = budget.seconds + 1
    with pytest.raises(RequestError) as caught:
        budget.check()
    assert (caught.value.status, caught.value.reason) == (422, "decode_timeout")
    assert caught.value.message == (f"decoding one keyframe of this streamed answer took longer than the limit of "
                                    f"{timeline.max_decode_seconds:g} s")


def test_stream_is_for_plain_requests():
    from handler.people.request import read_people_request

    body = {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}],
            "parameters": {"stream": True, "keyframes": [1]}}
    with pytest.raises(RequestError, match="stream applies to plain requests") as caught:
        read_people_request({"body": json.dumps(body).encode()}, {}, SERVE, 80)
    assert caught.value.status == 400


@pytest.fixture
def one_or_three(served, monkeypatch):
    """The served detector with 1 keyframe per answer and 3 per stream (a _timeline registration's
    relation at a size a test can afford); each forward counted in the returned list."""
    people = served.handler.people
    monkeypatch.setattr(people, "options", dataclasses.replace(people.options, max_keyframes_per_request=1,
                                                               max_streamed_keyframes_per_request=3))
    forwards: List[int] = []
    infer = people.model.infer
    monkeypatch.setattr(people.model, "infer", lambda *args: forwards.append(1) or infer(*args))
    return forwards


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_a_long_video_streams_a_line_per_keyframe_as_each_is_answered(served, one_or_three, shared_videos, monkeypatch):
    from harness.context import record_line

    forwards = one_or_three
    sent_after: List[int] = []  # forwards done when each line left

    def send(index: int, line: str, context) -> None:
        sent_after.append(len(forwards))
        record_line(index, line, context)

    monkeypatch.setattr(served.handler, "send_line", send)
    video = (shared_videos / KINETICS).read_bytes()
    status, body = served(video, {"stride": "4", "topk": "2"})
    assert status == 413 and "stream it (stream=true allows 3 keyframes)" in body["message"] and not forwards
    status, body = served(video, {"stride": "2", "stream": "true"})  # 6 keyframes
    assert status == 413 and "at most 3 per streamed request" in body["message"] and not forwards
    status, final = served(video, {"stride": "4", "topk": "2", "stream": "true"})
    assert status == 200 and isinstance(final, str) and final.endswith("\n")
    lines = [json.loads(line)["keyframe"] for line in served.context.streamed[0]]
    answer = json.loads(final)
    assert [line["index"] for line in lines] == [0, 1, 2] and {line["of"] for line in lines} == {3}
    assert sent_after == [1, 2, 3]  # each keyframe's line went out before the next keyframe's forward
    assert [k["time"] for k in answer["keyframes"]] == [0.5, 4.5, 8.5]
    assert [{k: v for k, v in line.items() if k not in ("index", "of")} for line in lines] == answer["keyframes"]
    assert all(len(k["persons"]) == 2 and len(k["persons"][0]["actions"]) == 2 for k in answer["keyframes"])


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_a_failure_mid_stream_ends_it_with_a_line_saying_why(served, shared_videos):
    """The status went out as 200 with the first line: the error object is the last line. Before
    any line, the status says it as for any answer."""
    video = (shared_videos / KINETICS).read_bytes()
    outside = [[5000, 5000, 6000, 6000]]  # nothing inside the 340x256 frame: 422 when its keyframe comes
    boxes = json.dumps({"1": [[10, 20, 150, 250]], "4": [], "7": outside})
    status, last = served(video, {"boxes": boxes, "stream": "true"})
    assert status == 200 and isinstance(last, str) and last.endswith("\n")
    assert [json.loads(line)["keyframe"]["time"] for line in served.context.streamed[0]] == [1.0, 4.0]
    error = json.loads(last)
    assert (error["code"], error["reason"]) == (422, "box_outside_frame") and "box at 7 s" in error["message"]
    status, body = served(video, {"boxes": json.dumps({"7": outside}), "stream": "true"})
    assert status == 422 and body["reason"] == "box_outside_frame" and not served.context.streamed


@pytest.mark.heavy  # the served detector: ~1 min to build, seconds a forward
def test_the_decode_budget_is_per_keyframe_only_where_a_stream_may_run_longer(served, shared_videos, monkeypatch):
    from handler.people import service

    budgets = []
    real = service.DecodeBudget
    monkeypatch.setattr(service, "DecodeBudget", lambda *args, **kwargs: budgets.append(real(*args, **kwargs)) or budgets[-1])
    video = (shared_videos / KINETICS).read_bytes()
    nobody = json.dumps({"2": []})  # no person: decoding only, no forward
    for headers in ({"boxes": nobody}, {"boxes": nobody, "stream": "true"}):
        assert served(video, headers)[0] == 200
    people = served.handler.people
    monkeypatch.setattr(people, "options", dataclasses.replace(
        people.options, max_streamed_keyframes_per_request=people.options.max_keyframes_per_request))
    assert served(video, {"boxes": nobody, "stream": "true"})[0] == 200  # the main registration's settings
    assert [b.per_window for b in budgets] == [False, True, False]
    assert {b.seconds for b in budgets} == {people.options.max_decode_seconds}
