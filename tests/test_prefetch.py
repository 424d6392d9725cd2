"""Decoding ahead of the forwards (handler/prefetch.py, setting ``prefetch_windows``): order, the
bound on how far ahead, errors in their place, cleanup however the consumer stops; then the
handler's batch path with it on: the same answers and lines, errors kept to their request,
decoding that stops for a client gone, the thread joined before the decoders close.

Timing: the bound checks wait (up to 10 s, polling) for the producer to go as far as it may, then
give it 50 ms more to go further; a producer slower than that would only make the
"never further" half pass vacuously, never fail a correct implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from handler.errors import RequestError
from handler.prefetch import Prefetcher, prefetched
from handler.serve_settings import ConfigError, ServeOptions
from harness.context import FakeContext, record_line


class Recorded:
    """A generator of 0..count-1 that records how many items were pulled and whether it was closed;
    ``fail_at``: the item at which it raises ``error`` instead."""

    def __init__(self, count: int, fail_at: int = -1, error: BaseException = ValueError("item failed (simulated)")) -> None:
        self.count, self.fail_at, self.error = count, fail_at, error
        self.pulled = 0
        self.closed = False
        self.threads: List[str] = []

    def __iter__(self) -> Iterator[int]:
        try:
            for item in range(self.count):
                self.pulled += 1
                self.threads.append(threading.current_thread().name)
                if item == self.fail_at:
                    raise self.error
                yield item
        finally:
            self.closed = True


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def prefetch_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


@pytest.mark.parametrize("ahead", [1, 2, 3])
def test_items_come_in_order_and_the_producer_is_never_more_than_ahead(ahead):
    source = Recorded(8)
    taken = 0
    with prefetched(iter(source), ahead) as items:
        assert wait_until(lambda: source.pulled == ahead)  # made before anyone asked
        for item in items:
            assert item == taken
            taken += 1
            # While the consumer works on its item, the producer makes exactly `ahead` more, no further.
            expected = min(taken + ahead, source.count)
            assert wait_until(lambda: source.pulled == expected), (taken, source.pulled)
            time.sleep(0.05)
            assert source.pulled == expected, (taken, source.pulled)
    assert taken == 8 and source.closed
    assert set(source.threads) == {"prefetch"}  # made in the thread, not by the consumer


def test_ahead_zero_pulls_lazily_in_the_callers_thread():
    source = Recorded(3)
    with prefetched(iter(source), 0) as items:
        assert source.pulled == 0
        assert next(items) == 0 and source.pulled == 1
        assert list(items) == [1, 2]
    assert set(source.threads) == {threading.current_thread().name} and not prefetch_threads()


def test_an_error_of_the_iterator_comes_out_in_its_place_in_the_consumers_thread():
    error = KeyError("decoder broke (simulated)")
    source = Recorded(6, fail_at=3, error=error)
    got: List[int] = []
    with prefetched(iter(source), 2) as items:
        with pytest.raises(KeyError) as raised:
            for item in items:
                got.append(item)
        assert raised.value is error and got == [0, 1, 2]
        assert list(items) == []  # ended: no more items, no second raise
    assert source.pulled == 4 and not prefetch_threads()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_a_consumer_that_stops_early_stops_joins_and_closes(how):
    source = Recorded(100)
    with pytest.raises(RuntimeError) if how == "raise" else _nothing():
        with prefetched(iter(source), 2) as items:
            assert next(items) == 0
            assert wait_until(lambda: source.pulled == 3)
            if how == "raise":
                raise RuntimeError("the consumer failed (simulated)")
    assert not prefetch_threads() and source.closed
    assert source.pulled == 3  # the one taken and the two ahead: nothing more was made


def test_close_waits_for_the_item_being_made():
    started, release = threading.Event(), threading.Event()
    finished: List[bool] = []

    def slow() -> Iterator[int]:
        yield 0
        started.set()
        release.wait(10)
        finished.append(True)
        yield 1

    prefetcher = Prefetcher(slow(), 1)
    assert next(prefetcher) == 0
    assert started.wait(10)
    closer = threading.Thread(target=prefetcher.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive() and not finished  # close blocks while the producer is inside next()
    release.set()
    closer.join(10)
    assert not closer.is_alive() and finished and not prefetch_threads()


def test_ahead_must_be_positive_and_the_setting_is_bounded():
    with pytest.raises(ValueError):
        Prefetcher(iter([]), 0)
    with pytest.raises(ValueError):
        with prefetched(iter([]), -1):
            pass
    assert ServeOptions.from_config({"prefetch_windows": 2}).prefetch_windows == 2
    for bad in (-1, 9, "yes"):
        with pytest.raises(ConfigError, match="prefetch_windows"):
            ServeOptions.from_config({"prefetch_windows": bad})


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


# -- the handler's batch path with prefetching on --------------------------------------------------


@pytest.fixture(scope="module")
def handler(built):
    from handler.slowfast_handler import SlowFastHandler

    instance = SlowFastHandler(send_line=record_line)
    instance.initialize(FakeContext(built["pt"].parent, 1))
    return instance


def with_prefetch(handler: Any, windows: int) -> Any:
    changed = copy.copy(handler)
    changed.options = dataclasses.replace(handler.options, prefetch_windows=windows)
    return changed


def handle(handler: Any, rows: List[Dict[str, Any]], headers: Dict[int, Dict[str, str]]):
    context = FakeContext(Path("."), len(rows))
    context.headers = headers
    return handler.handle(rows, context), context


def test_answers_and_streamed_lines_are_the_same_with_and_without_prefetch(handler, shared_videos):
    names = ["tv__WUzgd7C1pWA.mp4", "ii__realshort.mp4", "mp__big_buck_bunny_432_433.webm"]
    rows = [{"body": (shared_videos / name).read_bytes()} for name in names]
    headers = {0: {"timeline": "true", "stream": "true", "end": "6"}, 2: {"clips": "2"}}
    answers = {windows: handle(with_prefetch(handler, windows), rows, headers) for windows in (0, 1)}
    (serial, serial_context) = answers[0]
    for windows in (1,):
        responses, context = answers[windows]
        assert not context.statuses and len(context.streamed[0]) == len(serial_context.streamed[0]) >= 2
        lines = [json.loads(line)["window"] for line in context.streamed[0]]
        expected = [json.loads(line)["window"] for line in serial_context.streamed[0]]
        assert [line["index"] for line in lines] == list(range(len(expected)))
        for line, want in zip(lines, expected):
            assert [p["label"] for p in line["predictions"]] == [p["label"] for p in want["predictions"]]
            assert [p["probability"] for p in line["predictions"]] == pytest.approx(
                [p["probability"] for p in want["predictions"]], abs=1e-6)
        for response, want in zip(responses[1:], serial[1:]):
            assert response["views"] == want["views"] and response["windows"] == want["windows"]
            assert [p["label"] for p in response["predictions"]] == [p["label"] for p in want["predictions"]]
            assert [p["probability"] for p in response["predictions"]] == pytest.approx(
                [p["probability"] for p in want["predictions"]], abs=1e-6)
    assert not prefetch_threads()


def _failing_windows(monkeypatch, fail: Callable[[int, int], bool], counts: Dict[int, int]) -> None:
    """Make a video's decoding raise a 422 at the window where ``fail(windows planned, window)``;
    ``counts[windows planned]``: windows decoded by the videos with that many planned."""
    from handler.decoding import VideoDecoder

    real = VideoDecoder.sample_windows

    def sample_windows(self, windows, num_frames):
        planned = len(windows)
        for window, sampled in enumerate(real(self, windows, num_frames)):
            if fail(planned, window):
                raise RequestError(422, "decode_failed", f"window {window} broke (simulated)")
            counts[planned] = counts.get(planned, 0) + 1
            yield sampled

    monkeypatch.setattr(VideoDecoder, "sample_windows", sample_windows)


def test_a_decode_error_ends_only_its_request(handler, shared_videos, monkeypatch):
    counts: Dict[int, int] = {}
    _failing_windows(monkeypatch, lambda planned, window: planned == 3 and window == 1, counts)
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    headers = {0: {"clips": "3"}, 1: {"clips": "2"}}
    (failed, answered), context = handle(with_prefetch(handler, 1), [{"body": video}, {"body": video}], headers)
    assert context.statuses == {0: (422, "Unprocessable Entity")} and failed["reason"] == "decode_failed"
    assert answered["views"] == 2 and len(answered["predictions"]) == 5
    assert counts == {3: 1, 2: 2}  # the failed request's windows past the error were never decoded
    assert not prefetch_threads()


@pytest.mark.parametrize("ahead", [0, 2])
def test_a_timeline_whose_client_left_stops_decoding_within_the_prefetch(handler, shared_videos, monkeypatch, ahead):
    counts: Dict[int, int] = {}
    _failing_windows(monkeypatch, lambda planned, window: False, counts)
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    sent: List[int] = []

    def send(index: int, line: str, context: Any) -> None:
        if len(sent) == 1:
            raise BrokenPipeError("the client went away (simulated)")
        sent.append(index)
        record_line(index, line, context)

    sender = with_prefetch(handler, ahead)
    sender.send_line = send
    headers = {0: {"timeline": "true", "stream": "true", "stride": "0.5"}}
    (failed,), context = handle(sender, [{"body": video}], headers)
    assert json.loads(failed)["reason"] == "internal_error" and len(sent) == 1
    windows = json.loads(context.streamed[0][0])["window"]["of"]
    # The second line failed after windows 0 and 1 ran: at most `ahead` more were decoded meanwhile.
    assert windows > 2 + ahead and 2 <= counts[windows] <= 2 + ahead, (windows, counts)
    assert not prefetch_threads()


def test_the_thread_is_joined_before_the_decoders_close_even_when_the_run_fails(handler, shared_videos, monkeypatch):
    from handler import slowfast_handler as module
    from handler.decoding import VideoDecoder

    alive_at_close: List[bool] = []
    real_close = VideoDecoder.close

    def close(self):
        alive_at_close.append(bool(prefetch_threads()))
        real_close(self)

    def broken_run(jobs, *args, **kwargs):
        next(iter(jobs))  # the thread is running and decoding ahead
        raise KeyError("a bug in the run itself (simulated)")
        yield  # a generator, like run_windows

    monkeypatch.setattr(VideoDecoder, "close", close)
    monkeypatch.setattr(module, "run_windows", broken_run)
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    responses, context = handle(with_prefetch(handler, 2), [{"body": video}, {"body": video}],
                                {0: {"clips": "3"}, 1: {"clips": "3"}})
    assert [context.statuses[i][0] for i in (0, 1)] == [500, 500]
    assert alive_at_close == [False, False] and not prefetch_threads()


@pytest.mark.slow
@pytest.mark.integration
def test_a_torchserve_worker_with_prefetch_batches_and_streams_as_in_process_without(built, handler, shared_videos,
                                                                                      tmp_path):
    """Through a real TorchServe (the worker's socket, its intermediate responses from the handler's
    thread while the prefetch thread decodes): 4 concurrent requests and a streamed timeline."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from export.archive import build_archive
    from harness.precision import model_config
    from harness.torchserve import LocalTorchServe

    mar = build_archive(built["pt"], tmp_path / "slowfast_prefetch.mar", model_config(tmp_path, prefetch_windows=2))
    video = (shared_videos / "tv__WUzgd7C1pWA.mp4").read_bytes()
    stream_headers = {"timeline": "true", "stream": "true", "end": "6"}
    with LocalTorchServe(mar, tmp_path / "ts") as server:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: server.predict(video), range(4)))
        url = server.predictions_url
        headers = {"Content-Type": "application/octet-stream", **server.keys.inference_header(), **stream_headers}
        with requests.post(url, data=video, headers=headers, stream=True, timeout=300) as reply:
            assert reply.status_code == 200, reply.text
            lines = [json.loads(raw) for raw in reply.iter_lines() if raw.strip()]
    (expected,), _ = handle(handler, [{"body": video}], {})
    for reply in replies:
        assert reply.status_code == 200, reply.text
        served = reply.json()["predictions"]
        assert [p["label"] for p in served] == [p["label"] for p in expected["predictions"]]
        assert [p["probability"] for p in served] == pytest.approx([p["probability"] for p in expected["predictions"]], abs=1e-5)
    (final,), context = handle(handler, [{"body": video}], {0: stream_headers})
    windows, answer = [line["window"] for line in lines[:-1]], lines[-1]
    assert [w["index"] for w in windows] == list(range(len(context.streamed[0]))) and len(windows) >= 2
    assert [entry["start"] for entry in answer["timeline"]] == [entry["start"] for entry in json.loads(final)["timeline"]]
    for line, want in zip(windows, (json.loads(x)["window"] for x in context.streamed[0])):
        assert [p["label"] for p in line["predictions"]] == [p["label"] for p in want["predictions"]]
