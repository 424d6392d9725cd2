"""The action detector through a real TorchServe (issue 27): `make mar MODEL=slowfast_r50_detection`
packs it and the handler serves it beside the classifier's path.

Slow: the export scripts and checks the network at 256 x 320 (minutes on 2 loaded cores). Offline
(here) the person detector's weights cannot be fetched, so the .mar has none: requests must
carry boxes, which is what this checks end to end (raw body with a header, multipart field), and
a long video's keyframes streamed on the ``_timeline`` registration (config.properties registers
every model again under that name)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests

from harness.paths import REPO
from harness.torchserve import LocalTorchServe

NAME = "slowfast_r50_detection"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def detection_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    subprocess.run(["make", "--no-print-directory", "mar", f"MODEL={NAME}", "CHECKPOINT=random"], cwd=REPO, check=True)
    instance = LocalTorchServe(REPO / "model_store" / f"{NAME}.mar", tmp_path_factory.mktemp("torchserve-people"),
                               also_as=[f"{NAME}_timeline"])
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_served_through_torchserve_with_boxes(detection_server: LocalTorchServe, shared_videos: Path) -> None:
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    reply = detection_server.predict(video, {"boxes": json.dumps({"5": [[10, 20, 150, 250]]}), "topk": "3"})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    (keyframe,) = answer["keyframes"]
    assert keyframe["persons"][0]["box"] == [10, 20, 150, 250] and len(keyframe["persons"][0]["actions"]) == 3
    assert answer["model"] == NAME and answer["person_detector"] is None
    reply = detection_server.predict(video)
    assert reply.status_code == 400 and reply.json()["reason"] == "boxes_required"
    multipart = requests.post(
        detection_server.predictions_url, files={"data": ("clip.mp4", video)},
        data={"boxes": json.dumps({"2": [[0, 0, 100, 100]], "7": []})},
        headers=detection_server.keys.inference_header(), timeout=300,
    )
    assert multipart.status_code == 200, multipart.text
    assert [len(k["persons"]) for k in multipart.json()["keyframes"]] == [1, 0]


def test_a_long_video_streams_its_keyframes_on_the_timeline_registration(detection_server: LocalTorchServe,
                                                                        shared_videos: Path) -> None:
    """17 keyframes: more than an answer (16) may hold; the main registration refuses to stream
    them (its worker stays free for short answers) and names the one that does."""
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()  # 10.9 s
    times = [round(0.5 + 0.6 * k, 1) for k in range(17)]
    boxes = {f"{t:g}": ([[10, 20, 150, 250]] if t in (times[0], times[-1]) else []) for t in times}
    fields = {"boxes": json.dumps(boxes), "stream": "true", "topk": "2"}
    refused = detection_server.predict(video, fields)
    assert refused.status_code == 413 and f"/predictions/{NAME}_timeline (stream=true)" in refused.json()["message"]
    with requests.post(detection_server.predictions_url_of(f"{NAME}_timeline"), data=video, stream=True, timeout=300,
                       headers={**detection_server.keys.inference_header(), **fields}) as reply:
        assert reply.status_code == 200, reply.text
        lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    *streamed, final = lines
    assert [line["keyframe"]["index"] for line in streamed] == list(range(17)) and streamed[0]["keyframe"]["of"] == 17
    assert [k["time"] for k in final["keyframes"]] == times
    assert [{k: v for k, v in line["keyframe"].items() if k not in ("index", "of")} for line in streamed] == final["keyframes"]
    assert [len(k["persons"]) for k in final["keyframes"]] == [1] + [0] * 15 + [1]
    assert len(final["keyframes"][0]["persons"][0]["actions"]) == 2
    # A failure after the first line: the status is 200 by then, the last line says why.
    boxes[f"{times[5]:g}"] = [[5000, 5000, 6000, 6000]]
    with requests.post(detection_server.predictions_url_of(f"{NAME}_timeline"), data=video, stream=True, timeout=300,
                       headers={**detection_server.keys.inference_header(), **fields, "boxes": json.dumps(boxes)}) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    assert reply.status_code == 200 and [line["keyframe"]["index"] for line in lines[:-1]] == list(range(5))
    assert (lines[-1]["code"], lines[-1]["reason"]) == (422, "box_outside_frame")
