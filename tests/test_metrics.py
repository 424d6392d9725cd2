"""Handler metrics on TorchServe's Prometheus metrics API (issue 5): decode time, frames decoded,
views, video seconds, requests by status and rejections by reason move by exactly what the
requests did. Per-request figures are ratios of counters (views / ok requests etc.), as in PromQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from harness.prometheus import parse_prometheus, value
from harness.torchserve import LocalTorchServe

pytestmark = pytest.mark.integration

HANDLER_METRICS = ["SlowFastDecodeMs", "SlowFastFramesDecoded", "SlowFastViews", "SlowFastVideoSeconds",
                   "SlowFastRequests", "SlowFastRejected"]


def test_parse_prometheus() -> None:
    text = '# TYPE X counter\nX{ModelName="m",Status="ok",Hostname="h",} 3.0\nX{ModelName="m",Status="400",} 1.0\nY 2\n'
    samples = parse_prometheus(text)
    assert value(samples, "X") == 4.0 and value(samples, "X", Status="ok") == 3.0 and value(samples, "Y") == 2.0
    assert value(samples, "Z") == 0.0


def test_handler_metrics_move_after_requests(server: LocalTorchServe, shared_videos: Path) -> None:
    model = server.model_name
    before = parse_prometheus(server.metrics())
    good = [  # (clip, headers): 1 view, and 3 crops of one window = 3 views
        ("dc__video_90.mov", {}),
        ("tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi", {"crops": "3"}),
    ]
    answers = []
    for name, headers in good:
        reply = server.predict((shared_videos / name).read_bytes(), headers)
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
    assert [a["views"] for a in answers] == [1, 3]
    bad = [("tc__nasa_13013.mp4.audio.mp3", {}, 422, "no_video_stream"),
           ("dc__video_90.mov", {"clips": "99"}, 400, "bad_option")]
    for name, headers, status, reason in bad:
        reply = server.predict((shared_videos / name).read_bytes(), headers)
        assert reply.status_code == status and reply.json()["reason"] == reason, reply.text

    def delta(after, metric: str, **labels: str) -> float:
        return value(after, metric, ModelName=model, **labels) - value(before, metric, ModelName=model, **labels)

    # The worker reports metrics through its log; the frontend picks them up asynchronously.
    deadline = time.monotonic() + 60
    while True:
        after = parse_prometheus(server.metrics())
        settled = (delta(after, "SlowFastRequests", Status="ok") >= 2
                   and delta(after, "SlowFastRejected", Reason="bad_option") >= 1)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    names = {n for n, _, _ in after}
    assert set(HANDLER_METRICS) <= names, f"missing: {set(HANDLER_METRICS) - names}"
    assert delta(after, "SlowFastRequests", Status="ok") == 2
    assert delta(after, "SlowFastRequests", Status="422") == 1
    assert delta(after, "SlowFastRequests", Status="400") == 1
    assert delta(after, "SlowFastRejected", Reason="no_video_stream") == 1
    assert delta(after, "SlowFastRejected", Reason="bad_option") == 1
    assert delta(after, "SlowFastViews") == sum(a["views"] for a in answers) == 4
    assert delta(after, "SlowFastFramesDecoded") == sum(a["video"]["frames_decoded"] for a in answers)
    seconds = sum(a["video"]["duration_s"] for a in answers)
    assert delta(after, "SlowFastVideoSeconds") == pytest.approx(seconds, abs=0.01)
    # Gauge: decode time of the last decoded request (the rejected ones never reached the decoder's end).
    assert value(after, "SlowFastDecodeMs", ModelName=model) == pytest.approx(answers[-1]["video"]["decode_ms"], abs=0.05)
    print(
        f"\n[metrics] views/request={delta(after, 'SlowFastViews') / 2:.1f} "
        f"video s/request={delta(after, 'SlowFastVideoSeconds') / 2:.2f} "
        f"frames/request={delta(after, 'SlowFastFramesDecoded') / 2:.0f} "
        f"last decode ms={value(after, 'SlowFastDecodeMs', ModelName=model):.1f}"
    )


def test_metrics_api_filters_by_name(server: LocalTorchServe) -> None:
    """The scrape line in docs/operations.md: ``/metrics?name[]=...`` returns only those metrics."""
    reply = requests.get(f"{server.metrics_url}/metrics",
                         params=[("name[]", "SlowFastViews"), ("name[]", "SlowFastRejected")], timeout=10)
    assert reply.ok
    names = {n for n, _, _ in parse_prometheus(reply.text)}
    assert names and names <= {"SlowFastViews", "SlowFastRejected"}, names
