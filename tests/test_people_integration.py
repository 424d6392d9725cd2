"""The action detector through a real TorchServe (issue 27): `make mar MODEL=slowfast_r50_detection`
packs it and the handler serves it beside the classifier's path.

Slow: the export scripts and checks the network at 256 x 320 (minutes on 2 loaded cores). Offline
(here) the person detector's weights cannot be fetched, so the .mar has none: requests must
carry boxes, which is what this checks end to end (raw body with a header, multipart field)."""

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
    instance = LocalTorchServe(REPO / "model_store" / f"{NAME}.mar", tmp_path_factory.mktemp("torchserve-people"))
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
