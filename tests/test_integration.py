"""A real TorchServe on 127.0.0.1 serving the built .mar, spoken to over HTTP."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

import av
import numpy as np
import pytest
import requests

from tests.edge_cases import CASES, EXPECTED, build, truncations
from harness.synth import make_video

pytestmark = pytest.mark.integration


def probabilities_by_index(answer: Dict) -> Dict[int, float]:
    return {p["index"]: p["probability"] for p in answer["predictions"]}


def assert_same_answer(a: Dict, b: Dict, tolerance: float = 1e-5) -> None:
    assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
    for x, y in zip(a["predictions"], b["predictions"]):
        assert x["probability"] == pytest.approx(y["probability"], abs=tolerance)


def assert_prediction_shape(answer: Dict, contract, k: int = 5) -> None:
    predictions = answer["predictions"]
    assert len(predictions) == k and answer["model"] == contract.model_name
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    for p in predictions:
        assert contract.labels[p["index"]] == p["label"]
    assert answer["windows"] and all(0 <= s < e for s, e in answer["windows"])


def worker_pids(server) -> List[int]:
    return sorted(w["pid"] for w in server.workers())


def test_every_shared_clip_is_answered(server, shared_videos, manifest, contract):
    pids_before = worker_pids(server)
    for name, row in sorted(manifest.items()):
        reply = server.predict((shared_videos / name).read_bytes())
        if row["video_codec"] == "none":
            assert reply.status_code == 422, name
            assert reply.json()["reason"] == "no_video_stream" and "audio" in reply.json()["message"]
            continue
        assert reply.status_code == 200, (name, reply.text[:300])
        answer = reply.json()
        assert_prediction_shape(answer, contract)
        duration = float(row["duration_s"])
        assert answer["video"]["duration_s"] == pytest.approx(duration, abs=0.1), name
        if "CORRUPTED" in row["content"]:
            assert "warnings" in answer and "failed to decode" in answer["warnings"][0]
        if row["rotation_deg"] not in ("", "0"):
            assert answer["video"]["rotation"] == int(row["rotation_deg"])
    assert worker_pids(server) == pids_before  # no worker died on the way


def test_request_shapes_multipart_header_and_raw(server, shared_videos, contract):
    video = (shared_videos / "ii__realshort.mp4").read_bytes()
    raw = server.predict(video).json()
    multipart = requests.post(
        server.predictions_url, files={"data": ("clip.mp4", video, "application/octet-stream")},
        data={"topk": "10"}, headers=server.keys.inference_header(), timeout=300,
    )
    assert multipart.status_code == 200 and len(multipart.json()["predictions"]) == 10
    assert_same_answer(raw, {"predictions": multipart.json()["predictions"][:5]})
    by_header = server.predict(video, headers={"X-Topk": "3"}).json()
    assert_same_answer({"predictions": raw["predictions"][:3]}, by_header)


def test_curl_default_form_encoding_gets_a_4xx_with_the_right_command(server):
    reply = requests.post(
        server.predictions_url, data=b"not-percent-encoded-binary",
        headers={**server.keys.inference_header(), "Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert reply.status_code == 415
    assert "--data-binary @clip.mp4" in reply.json()["message"]


def test_eight_at_once_equal_each_alone(server, shared_videos):
    names = ["tv__WUzgd7C1pWA.mp4", "tv__R6llTwEh07w.mp4", "ii__realshort.mp4", "mb__trim-buck-bunny.webm",
             "tv__v_SoccerJuggling_g23_c01.avi", "dc__video_90.mov", "tv__basketball.mp4",
             "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi"]
    videos = [(shared_videos / n).read_bytes() for n in names]
    alone = [server.predict(v).json() for v in videos]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(server.predict, videos))
    assert [r.status_code for r in together] == [200] * 8
    for name, a, t in zip(names, alone, together):
        assert_same_answer(a, t.json())
    # They were batched: some answer came from a batch of several requests.
    assert max(t.json()["timings_ms"]["batch_size"] for t in together) > 1


def test_scale_to_two_workers_and_back(server, shared_videos):
    reply = server.scale(min_worker=2, max_worker=2)
    assert reply.status_code == 200, reply.text
    ready = server.wait_ready(workers=2, timeout=300)
    described = server.describe()
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2
    assert len({w["pid"] for w in ready}) == 2
    assert server.predict((shared_videos / "ii__realshort.mp4").read_bytes()).status_code == 200
    reply = server.scale(min_worker=1, max_worker=1)
    assert reply.status_code == 200, reply.text
    described = server.describe()
    assert described["minWorkers"] == 1 and len(described["workers"]) == 1


def test_multi_view_request_lists_its_windows(server, shared_videos):
    video = (shared_videos / "tv__basketball.mp4").read_bytes()
    answer = server.predict(video, headers={"clips": "3", "crops": "3"}).json()
    assert answer["views"] == 9 and len(answer["windows"]) == 3
    # pytorchvideo's ConstantClipsPerVideoSampler: clip i starts at (duration - window) * i / clips.
    duration, window = answer["video"]["duration_s"], 64 / 30
    expected = [(duration - window) * i / 3 for i in range(3)]
    assert [w[0] for w in answer["windows"]] == pytest.approx(expected, abs=1e-3)
    assert all(b - a == pytest.approx(window, abs=1e-3) for a, b in answer["windows"])


def test_synthesized_corpus_answers_and_no_worker_dies(server, shared_videos):
    pids_before = worker_pids(server)
    good = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    reference = server.predict(good).json()
    cases = {name: build(name) for name in CASES}
    cases.update(truncations((shared_videos / "tv__basketball.mp4").read_bytes()))
    for name, data in cases.items():
        reply = server.predict(data)
        assert reply.status_code < 500, (name, reply.status_code, reply.text[:300])
        body = reply.json()
        expected = EXPECTED.get(name)
        if expected == 200:
            assert reply.status_code == 200, (name, body)
            assert len(body["predictions"]) == 5
        elif expected is not None:
            assert (reply.status_code, body["reason"]) == expected, name
            assert body["message"]
        elif reply.status_code != 200:  # truncations: answered from what decodes, or a clear 4xx
            assert body["reason"] and body["message"], name
    assert server.predict(b"").status_code == 400
    assert worker_pids(server) == pids_before
    assert_same_answer(reference, server.predict(good).json())


def _twin(data: bytes, quarter_turns: int) -> bytes:
    """Re-encode a clip's frames turned by ``quarter_turns`` x 90 degrees counter-clockwise, lossless, no rotation tag."""
    frames = [np.ascontiguousarray(np.rot90(f.to_ndarray(format="rgb24"), k=quarter_turns))
              for f in av.open(io.BytesIO(data)).decode(video=0)]
    height, width = frames[0].shape[:2]
    return make_video(frames=len(frames), width=width, height=height, codec="libx264", pix_fmt="yuv444p",
                      options={"preset": "ultrafast", "qp": "0"}, frame_source=lambda i: frames[i])


def test_rotated_phone_clip_answers_like_its_upright_twin(server, shared_videos, contract):
    data = (shared_videos / "dc__video_90.mov").read_bytes()
    everything = {"topk": str(contract.num_classes)}
    rotated = probabilities_by_index(server.predict(data, headers=everything).json())
    upright = probabilities_by_index(server.predict(_twin(data, -1), headers=everything).json())
    sideways = probabilities_by_index(server.predict(_twin(data, 1), headers=everything).json())

    def distance(a, b):
        return sum(abs(a[i] - b[i]) for i in a)

    print(f"rotated vs upright twin {distance(rotated, upright):.3g}, vs wrong-way twin {distance(rotated, sideways):.3g}")
    assert distance(rotated, upright) < 0.25 * distance(rotated, sideways)
