"""Timelines and embeddings through a real TorchServe: plain, streamed as JSON lines, and batched.

A window of a timeline must give what that window gives requested alone; a streamed timeline's
lines arrive as they are computed and its last line is the full answer; streamed and plain
requests batched together are each answered exactly as if alone.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import pytest
import requests

from export.reference import EMBEDDING_SIZE, NUM_CLASSES
from harness.paths import MODEL

pytestmark = pytest.mark.integration

CLIP = "tv__WUzgd7C1pWA.mp4"  # 10.9 s Kinetics clip: 5 windows at the default stride
EVERY_LABEL = str(NUM_CLASSES)  # topk: every class


def post(server, video: bytes, headers: Dict[str, str], stream: bool = False) -> requests.Response:
    return requests.post(
        server.predictions_url, data=video, stream=stream, timeout=300,
        headers={"Content-Type": "application/octet-stream", **server.keys.inference_header(), **headers},
    )


def streamed_lines(reply: requests.Response) -> List[Tuple[float, Dict[str, Any]]]:
    """(arrival time, parsed line) for each JSON line of a streamed answer."""
    return [(time.perf_counter(), json.loads(line)) for line in reply.iter_lines() if line.strip()]


def probabilities_by_label(predictions: List[Dict[str, Any]]) -> Dict[str, float]:
    return {p["label"]: p["probability"] for p in predictions}


@pytest.fixture(scope="module")
def clip(shared_videos) -> bytes:
    return (shared_videos / CLIP).read_bytes()


@pytest.fixture(scope="module")
def plain_timeline(server, clip) -> Dict[str, Any]:
    reply = post(server, clip, {"timeline": "true", "topk": EVERY_LABEL})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_timeline_windows_follow_the_stride_in_time_order(plain_timeline):
    timeline = plain_timeline["timeline"]
    window = 64 / 30
    assert len(timeline) == 5 and plain_timeline["views"] == 5
    assert [round(e["start"], 3) for e in timeline] == [round(k * window, 3) for k in range(5)]
    assert all(e["end"] - e["start"] == pytest.approx(window, abs=1e-3) for e in timeline)
    # The file's answer is the mean over the timeline's windows.
    mean = {label: sum(probabilities_by_label(e["predictions"])[label] for e in timeline) / 5
            for label in probabilities_by_label(timeline[0]["predictions"])}
    for p in plain_timeline["predictions"][:5]:
        assert p["probability"] == pytest.approx(mean[p["label"]], abs=1e-6)


def test_a_window_of_the_timeline_equals_that_window_alone(server, clip, plain_timeline):
    entry = plain_timeline["timeline"][3]
    reply = post(server, clip, {"start": str(entry["start"]), "end": str(entry["end"]), "topk": EVERY_LABEL})
    assert reply.status_code == 200, reply.text
    alone = reply.json()
    assert alone["windows"] == [[entry["start"], entry["end"]]]
    got, want = probabilities_by_label(entry["predictions"]), probabilities_by_label(alone["predictions"])
    assert max(abs(got[label] - want[label]) for label in want) < 1e-6


def test_streamed_lines_arrive_as_computed_and_end_with_the_full_answer(server, clip, plain_timeline):
    started = time.perf_counter()
    with post(server, clip, {"timeline": "true", "topk": EVERY_LABEL, "stream": "true"}, stream=True) as reply:
        assert reply.status_code == 200
        lines = streamed_lines(reply)
    windows = [line for _, line in lines if "window" in line]
    final = lines[-1][1]
    assert len(windows) == 5 and [w["window"]["index"] for w in windows] == list(range(5))
    assert all(w["window"]["of"] == 5 for w in windows) and "window" not in final
    assert [e["start"] for e in final["timeline"]] == [w["window"]["start"] for w in windows]
    for w, entry in zip(windows, plain_timeline["timeline"]):
        assert w["window"]["predictions"][:3] == entry["predictions"][:3]
    # Each window went out when it was computed, not all at the end.
    first_at, last_at = lines[0][0] - started, lines[-1][0] - started
    forward_s = final["timings_ms"]["inference"] / 1000 / 5
    assert last_at - first_at > 2 * forward_s, (first_at, last_at, forward_s)


def test_streamed_and_plain_requests_batched_together_answer_as_alone(server, shared_videos, clip, plain_timeline):
    others = ["ii__realshort.mp4", "tv__R6llTwEh07w.mp4"]
    alone = {name: post(server, (shared_videos / name).read_bytes(), {"topk": EVERY_LABEL}).json() for name in others}

    def streamed() -> List[Dict[str, Any]]:
        with post(server, clip, {"timeline": "true", "topk": EVERY_LABEL, "stream": "true"}, stream=True) as reply:
            return [line for _, line in streamed_lines(reply)]

    # A streamed timeline keeps the worker busy: once its first line is here, 4 windows are still
    # to run, so the requests sent now queue up in the frontend and form one batch.
    with post(server, clip, {"timeline": "true", "stream": "true"}, stream=True) as blocker:
        blocker_lines = blocker.iter_lines()
        assert "window" in json.loads(next(line for line in blocker_lines if line.strip()))
        with ThreadPoolExecutor(max_workers=3) as pool:
            stream_future = pool.submit(streamed)
            plain = {name: pool.submit(post, server, (shared_videos / name).read_bytes(), {"topk": EVERY_LABEL})
                     for name in others}
            for _ in blocker_lines:  # let the blocker finish, so the queued requests get the worker
                pass
            lines = stream_future.result()
            answers = {name: future.result().json() for name, future in plain.items()}
    batch_sizes = [lines[-1]["timings_ms"]["batch_size"]] + [a["timings_ms"]["batch_size"] for a in answers.values()]
    assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"
    for name in others:
        got, want = probabilities_by_label(answers[name]["predictions"]), probabilities_by_label(alone[name]["predictions"])
        assert max(abs(got[label] - want[label]) for label in want) < 1e-6
    assert [e["predictions"][0] for e in lines[-1]["timeline"]] == [e["predictions"][0] for e in plain_timeline["timeline"]]


def test_timeline_over_budget_is_413_with_the_way_out(server, clip):
    reply = post(server, clip, {"timeline": "true", "stride": "0.04"})
    assert reply.status_code == 413
    body = reply.json()
    assert body["reason"] == "over_budget" and "stride=" in body["message"]


def test_embedding_output_plain_and_normalised(server, clip):
    reply = post(server, clip, {"output": "embedding"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "predictions" not in body
    embedding = body["embedding"]
    assert embedding["dim"] == EMBEDDING_SIZE == len(embedding["values"]) and embedding["model"] == MODEL
    both = post(server, clip, {"output": "both", "normalize": "true"}).json()
    norm = sum(v * v for v in both["embedding"]["values"]) ** 0.5
    assert "predictions" in both and norm == pytest.approx(1.0, abs=1e-4) and both["embedding"]["normalized"] is True
    again = post(server, clip, {"output": "embedding"}).json()
    assert again["embedding"]["values"] == embedding["values"]


def test_every_answer_says_which_weights_and_runtime(server, contract, plain_timeline):
    assert plain_timeline["weights"] == contract.weights
    # The runtime the worker loaded, as its log says at start-up ("... runtime openvino-fp32, ...").
    log = (server.log_dir / "model_log.log").read_text(errors="replace")
    loaded = re.findall(r"runtime (\S+), micro-batch", log)
    assert loaded and plain_timeline["runtime"] == loaded[-1], loaded
