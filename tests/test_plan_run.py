"""Plan (windows, budget) and run (micro-batched scoring that returns scores and mutates nothing)."""

from __future__ import annotations

from dataclasses import replace
from typing import List

import pytest
import torch

from handler.errors import RequestError
from handler.request_options import RequestOptions, resolve_request_options
from handler.serve_settings import ServeOptions
from handler.plan import check_requested_views, plan_video, plan_videos
from handler.run import WindowFailure, WindowJob, mean_scores, run_windows
from handler.runtime_base import Outputs
from handler.sampling import timeline_windows

WINDOW = 64 / 30


class _Contract:
    """The fields of the preprocessing contract that plan and run read (values as exported)."""

    window_seconds = WINDOW
    crop_size = 4
    mean = (0.45, 0.45, 0.45)
    std = (0.225, 0.225, 0.225)
    alpha = 4
    num_frames = 8
    channel_order = "RGB"
    activation = "softmax"


CONTRACT = _Contract()


def options(**given) -> RequestOptions:
    return resolve_request_options(given, ServeOptions(), 400)


# -- timeline windows --------------------------------------------------------------------------


def test_timeline_windows_every_stride_inside_the_span():
    windows = timeline_windows(0.0, 10.0, WINDOW, WINDOW)
    assert len(windows) == 4 and windows[0] == (0.0, WINDOW)
    assert all(b - a == pytest.approx(WINDOW) for a, b in windows)
    assert windows[-1][1] <= 10.0 and windows[-1][1] + WINDOW > 10.0  # the next would end past the span
    half = timeline_windows(2.0, 10.0, WINDOW, WINDOW / 2)
    assert half[0][0] == 2.0 and half[1][0] == pytest.approx(2.0 + WINDOW / 2) and len(half) == 6


def test_timeline_window_ending_exactly_at_the_end_is_kept():
    assert len(timeline_windows(0.0, 3 * 2.0, 2.0, 2.0)) == 3


def test_timeline_of_a_span_shorter_than_a_window_is_one_window():
    assert timeline_windows(1.0, 2.0, WINDOW, 0.5) == [(1.0, 2.0)]


# -- plans -------------------------------------------------------------------------------------


def test_clips_plan_is_unchanged_by_the_refactor_and_start_end_offset_it():
    plan = plan_video(10.0, CONTRACT, options(clips=3, crops=3))
    assert plan.views == 9 and plan.windows[0][0] == 0.0
    part = plan_video(10.0, CONTRACT, options(start=4, end=9))
    assert part.windows == [(4 + (5 - WINDOW) / 2, 4 + (5 - WINDOW) / 2 + WINDOW)]


def test_timeline_plan_and_start_past_the_end():
    plan = plan_video(30.0, CONTRACT, options(timeline="true", stride="5", start="3", end="20"))
    assert [round(a, 3) for a, _ in plan.windows] == [3.0, 8.0, 13.0] and plan.windows[-1][1] <= 20.0
    with pytest.raises(RequestError) as caught:
        plan_video(30.0, CONTRACT, options(timeline="1", start="31"))
    assert caught.value.status == 400 and "past the end" in caught.value.message


def test_budget_refuses_before_decoding_with_the_numbers():
    serve = ServeOptions(max_views_per_request=48)
    with pytest.raises(RequestError) as caught:
        check_requested_views(12, options(clips=10, crops=3), serve)
    assert caught.value.status == 413 and caught.value.reason == "over_budget"
    assert "12 video(s) x 10 window(s) x 3 crop(s) = 360 views" in caught.value.message and "48" in caught.value.message
    check_requested_views(1, options(clips=10, crops=3), serve)  # 30 views: within budget


def test_timeline_budget_names_the_way_out_and_streaming_allows_more():
    serve = ServeOptions(max_views_per_request=48, max_streamed_views_per_request=2048)
    long_timeline = options(timeline="true")
    with pytest.raises(RequestError) as caught:
        plan_videos([600.0], CONTRACT, long_timeline, serve)
    message = caught.value.message
    assert caught.value.status == 413 and "281 window(s)" in message and "stride=" in message and "stream" in message
    fitting = float(message.split("stride=")[1].split(" ")[0])
    assert len(plan_videos([600.0], CONTRACT, options(timeline="true", stride=fitting), serve)[0].windows) <= 48
    assert len(plan_videos([600.0], CONTRACT, options(timeline="true", stream="true"), serve)[0].windows) == 281


@pytest.mark.parametrize("given, fragment", [
    ({"output": "scores"}, "output must be one of"),
    ({"timeline": "maybe"}, "true or false"),
    ({"timeline": "true", "clips": "3"}, "exclude each other"),
    ({"stride": "2"}, "timeline=true"),
    ({"timeline": "true", "stride": "0"}, "stride must be > 0"),
    ({"start": "-1"}, "number of seconds"),
    ({"start": "nan"}, "number of seconds"),
    ({"start": "5", "end": "5"}, "must be after start"),
])
def test_bad_timeline_and_output_options_are_400(given, fragment):
    with pytest.raises(RequestError) as caught:
        options(**given)
    assert caught.value.status == 400 and fragment in caught.value.message


# -- run ---------------------------------------------------------------------------------------


def fake_infer(calls: List[int]):
    """Outputs that identify the view: the mean pixel of its fast pathway."""
    def infer(pathways: List[torch.Tensor]) -> Outputs:
        fast = pathways[1]
        calls.append(fast.shape[0])
        level = fast.mean(dim=(1, 2, 3, 4))
        return Outputs(logits=torch.stack([level * 10, level - 1], 1), probabilities=torch.stack([level, -level], 1),
                       embedding=torch.stack([level, level * 2, level * 3], 1))
    return infer


def job(key, value: int, crops: int = 1) -> WindowJob:
    return WindowJob(key, torch.full((8, 6, 6, 3), value, dtype=torch.uint8), crops)


def test_run_scores_each_window_in_order_across_micro_batches_and_leaves_inputs_untouched():
    jobs = [job(("a", 0), 10, crops=3), job(("a", 1), 200), job(("b", 0), 50, crops=3)]
    before = [j.frames.clone() for j in jobs]
    calls: List[int] = []
    scores = list(run_windows(iter(jobs), CONTRACT, fake_infer(calls), micro_batch=2))
    assert [s.key for s in scores] == [("a", 0), ("a", 1), ("b", 0)]
    assert calls == [2, 2, 2, 1] and [s.views for s in scores] == [3, 1, 3]
    assert all(torch.equal(j.frames, b) for j, b in zip(jobs, before))
    alone = list(run_windows(iter([job(("x", 0), 200)]), CONTRACT, fake_infer([]), micro_batch=1))[0]
    assert torch.equal(scores[1].probabilities, alone.probabilities) and torch.equal(scores[1].embedding, alone.embedding)


def test_a_window_that_fails_a_shared_micro_batch_fails_alone_in_its_place():
    # The forward refuses any micro-batch holding a view of the window of value 99; the other
    # windows of that micro-batch are run again apart, and the failure comes out in order.
    calls: List[int] = []
    real = fake_infer(calls)

    def infer(pathways: List[torch.Tensor]) -> Outputs:
        if (pathways[1].flatten(1).max(1).values > fake_level(98)).any():
            calls.append(-pathways[1].shape[0])
            raise ValueError("bad input (simulated)")
        return real(pathways)

    jobs = [job(("a", 0), 10), job(("b", 0), 99, crops=3), job(("c", 0), 50), job(("c", 1), 60)]
    results = list(run_windows(iter(jobs), CONTRACT, infer, micro_batch=4))
    assert [r.key for r in results] == [("a", 0), ("b", 0), ("c", 0), ("c", 1)]
    assert isinstance(results[1], WindowFailure) and str(results[1].error) == "bad input (simulated)"
    assert not any(isinstance(r, WindowFailure) for r in results[::2] + results[3:])
    # 4 views (a, b x3) refused; then a alone, b alone (refused); then c0, c1 together.
    assert calls == [-4, 1, -3, 2]
    alone = list(run_windows(iter([job(("c", 0), 50)]), CONTRACT, fake_infer([]), micro_batch=1))[0]
    assert torch.equal(results[2].probabilities, alone.probabilities)


def test_frames_of_a_wrong_shape_fail_their_window_only():
    bad = WindowJob(("b", 0), torch.zeros(8, 6, 3, dtype=torch.uint8), 1)
    results = list(run_windows(iter([job(("a", 0), 10), bad, job(("c", 0), 50)]), CONTRACT, fake_infer([]), micro_batch=2))
    assert [type(r).__name__ for r in results] == ["WindowScores", "WindowFailure", "WindowScores"]


def fake_level(value: int) -> float:
    """The largest normalized fast-pathway value of a frame of ``value`` (CONTRACT's mean and std)."""
    return max((value / 255 - m) / s for m, s in zip(CONTRACT.mean, CONTRACT.std))


def test_run_pulls_windows_lazily():
    pulled: List[int] = []

    def jobs():
        for i in range(5):
            pulled.append(i)
            yield job(("v", i), i)

    stream = run_windows(jobs(), CONTRACT, fake_infer([]), micro_batch=1)
    next(stream)
    assert pulled == [0]


def test_mean_scores_average_windows():
    scores = list(run_windows(iter([job(1, 10), job(2, 30)]), CONTRACT, fake_infer([]), micro_batch=4))
    mean = mean_scores(scores)
    assert torch.allclose(mean.probabilities, (scores[0].probabilities + scores[1].probabilities) / 2)
    assert mean.embedding.shape == (3,)
