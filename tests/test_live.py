"""``python -m client live`` without TorchServe: the rolling buffer, remuxed and encoded clips,
the smoothing and events, in-order reporting, and a server slower than the hop (a fake one).

Against a real TorchServe (UDP, RTSP, a dropped stream, answers equal to the clips sent alone):
tests/test_live_integration.py.
"""

from __future__ import annotations

import io
import json
import threading
import time
import tracemalloc
from pathlib import Path
from typing import List, Optional

import av
import numpy as np
import pytest

from client.cli import main as client_main
from client.endpoint import ClientError
from client.live import cli as live_cli
from client.live.buffer import WindowBuffer
from client.live.clip import FrameRecord, PacketRecord, packets_of_window, remux, scaled_size, stream_format
from client.live.report import Smoother
from client.live.runner import InOrder, WindowResult
from client.live.sender import make_stream_file
from client.live.source import parse_source
from client.transport import Answer
from tests.fake_torchserve import FakeTorchServe, Reply, ok

WINDOW = 64 / 30  # the fake server's model; the real one's is asked of the server (integration tests)
FPS = 25


@pytest.fixture(scope="module")
def stream_file(shared_videos: Path, tmp_path_factory) -> Path:
    """12 s of a real clip as a camera would send it: H.264, 25 fps, a keyframe a second, in MPEG-TS."""
    return make_stream_file(shared_videos / "tv__WUzgd7C1pWA.mp4", tmp_path_factory.mktemp("live") / "stream.ts",
                            fps=FPS, seconds=12.0)


@pytest.fixture(scope="module")
def short_stream_file(shared_videos: Path, tmp_path_factory) -> Path:
    """7 s of the same, for runs played in real time (each costs its stream's length in wall time)."""
    return make_stream_file(shared_videos / "tv__WUzgd7C1pWA.mp4", tmp_path_factory.mktemp("live") / "short.ts",
                            fps=FPS, seconds=7.0)


def read_packets(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fmt = stream_format(stream)
        records = [PacketRecord(bytes(p), p.pts, p.dts, p.duration, p.is_keyframe, float(p.pts * stream.time_base),
                                0.0, float(p.pts * stream.time_base))
                   for p in container.demux(stream) if p.size]
    return fmt, records


def decoded(data_or_path) -> List:
    """[(time s, rgb ndarray)] of every frame."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        return [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


# -- sources and usage ---------------------------------------------------------------------


def test_sources_are_told_apart(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    clip.write_bytes(b"x")
    assert parse_source("rtsp://cam/1").kind == "stream"
    assert parse_source("udp://127.0.0.1:5000").live
    assert parse_source("/dev/video0").format == "v4l2"
    assert not parse_source(str(clip)).live
    assert parse_source(str(clip), realtime=True).live
    with pytest.raises(ClientError, match="unknown stream scheme"):
        parse_source("gopher://x")
    with pytest.raises(ClientError, match="no such file"):
        parse_source(str(tmp_path / "missing.ts"))


@pytest.mark.parametrize("flags, message", [
    (["--hop", "0"], "--hop must be > 0"),
    (["--concurrency", "0"], "--concurrency must be 1"),
    (["--event-threshold", "1.5"], "--event-threshold is a probability"),
    (["--average", "0"], "--average must be 1"),
])
def test_bad_flags_are_usage_errors(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        client_main(["live", "udp://127.0.0.1:5000", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_request_flags_come_from_the_servers_option_table(capsys) -> None:
    from handler.option_table import request_option

    parser = live_cli.build_parser()
    actions = {action.dest: action for action in parser._actions}  # noqa: SLF001 - argparse has no public listing
    for name in live_cli.LIVE_REQUEST_OPTIONS:
        option = request_option(name)
        assert actions[name].help.startswith(option.help)
        if option.choices:
            assert tuple(actions[name].choices) == option.choices
    # The server's `threshold` (labels above P) is not the live client's event threshold: no flag
    # of that name, so an old `--threshold 0.6` fails loudly instead of meaning something else.
    assert "threshold" not in actions and actions["event_threshold"].default is None
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--threshold", "0.6"])
    capsys.readouterr()


def test_a_window_line_carries_every_output_kind_the_answer_holds() -> None:
    from client.live.report import window_line
    from client.options import answer_key
    from handler.option_table import OUTPUTS
    from handler.render import OUTPUT_KINDS

    # The client finds each kind where the server's renderer puts it.
    assert all(answer_key(name) == kind.key for name, kind in OUTPUT_KINDS.items())
    assert {kind for kinds in OUTPUTS.values() for kind in kinds} <= set(OUTPUT_KINDS)
    predictions = [{"label": f"l{i}", "index": i, "probability": 0.1} for i in range(6)]
    body = {"predictions": predictions, "embedding": [0.5, 0.25], "logits": {"activation": "softmax", "values": [1.0]},
            "timings_ms": {"handler_total": 12.5}}
    line = window_line(WindowResult(0, 1.0, 3.0, 0, "remux", 10, {}, Answer(body, 1), 0.5), topk=2)
    assert line["predictions"] == predictions[:2] and line["embedding"] == [0.5, 0.25]
    assert line["logits"] == body["logits"] and line["handler_ms"] == 12.5


def test_smoothing_asks_for_more_labels() -> None:
    args = live_cli.build_parser().parse_args(["x", "--topk", "3", "--average", "4", "--embedding"])
    assert live_cli.request_fields(args) == {"topk": str(live_cli.SMOOTHING_TOPK), "output": "embedding"}
    args = live_cli.build_parser().parse_args(["x", "--topk", "3", "--crops", "3"])
    assert live_cli.request_fields(args) == {"topk": "3", "crops": "3"}


# -- clips -------------------------------------------------------------------------------


def test_a_remuxed_window_holds_the_sources_frames_exactly(stream_file: Path) -> None:
    fmt, records = read_packets(stream_file)
    newest = next(i for i, r in enumerate(records) if r.t >= 7.3)
    end = records[newest].t + 1 / FPS
    start = end - WINDOW
    packets = packets_of_window(records[: newest + 1], start)
    assert packets[0].keyframe and packets[0].t == pytest.approx(5.0)  # the last keyframe before 5.19 s
    clip = remux(packets, fmt, start, end)
    assert clip.mode == "remux" and clip.container == "mpegts" and not clip.partial
    assert float(clip.fields["start"]) == pytest.approx(start - 5.0, abs=1e-6)
    assert float(clip.fields["end"]) == pytest.approx(end - 5.0, abs=1e-6)
    source = {round(t, 3): frame for t, frame in decoded(stream_file)}
    frames = decoded(clip.data)
    assert len(frames) == newest + 1 - records.index(packets[0])
    for t, frame in frames:
        np.testing.assert_array_equal(frame, source[round(t + 5.0, 3)])


def test_buffer_keeps_the_window_from_its_keyframe_and_no_more(stream_file: Path) -> None:
    fmt, records = read_packets(stream_file)
    buffer = WindowBuffer(WINDOW, max_seconds=30.0)
    buffer.reset(fmt)
    longest = 0.0
    for record in records:
        buffer.add(record)
        longest = max(longest, buffer.seconds())
        kept = buffer.snapshot()
        assert kept[0].keyframe and kept[0].t <= buffer.newest_end - WINDOW + 1e-9 or kept[0].t == 0.0
    assert longest <= WINDOW + 1.0 + 1 / FPS + 1e-6  # a window plus at most one keyframe interval (1 s)
    assert buffer.full()


def test_buffer_is_bounded_when_keyframes_are_rare() -> None:
    buffer = WindowBuffer(2.0, max_seconds=5.0)
    for k in range(400):  # 16 s at 25 fps with a single keyframe at 0
        buffer.add(PacketRecord(b"\0" * 1000, k * 3600, k * 3600, 3600, k == 0, k / 25, 0.0))
    assert buffer.seconds() <= 5.0 and buffer.bytes <= 5 * 25 * 1000


def test_encoded_window_is_at_the_short_side() -> None:
    frames = []
    for k in range(round(WINDOW * FPS)):
        image = np.full((480, 640, 3), k * 4, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(width=342, height=256, format="yuv420p")
        frames.append(FrameRecord(frame, 10 + k / FPS, 0.0))
    from client.live.clip import encode

    clip = encode(frames, 10.0, 10.0 + len(frames) / FPS)
    out = decoded(clip.data)
    assert len(out) == len(frames) and out[0][1].shape == (256, 342, 3)
    assert clip.fields == {"start": "0.000000", "end": f"{len(frames) / FPS:.6f}"}
    assert scaled_size(640, 480, 256) == (340, 256) and scaled_size(480, 640, 256) == (256, 340)  # even, for yuv420p
    assert scaled_size(320, 240, 256) == (320, 240)  # never enlarged


# -- reporting -----------------------------------------------------------------------------


def test_threshold_events_start_and_end() -> None:
    smoother = Smoother(average=2, threshold=0.5)
    events = []
    for t, p in enumerate([0.2, 0.9, 0.9, 0.1, 0.1]):
        _, new = smoother.update([{"label": "waving", "probability": p}], float(t), segment=0)
        events += new
    # means: 0.2, 0.55, 0.9, 0.5, 0.1
    assert [(e["event"], e["t"]) for e in events] == [("start", 1.0), ("end", 4.0)]
    assert events[0]["score"] == pytest.approx(0.55)


def test_a_new_segment_ends_the_events_and_the_average() -> None:
    smoother = Smoother(average=3, threshold=0.5)
    smoother.update([{"label": "a", "probability": 0.8}], 1.0, segment=0)
    scores, events = smoother.update([{"label": "b", "probability": 0.6}], 9.0, segment=1)
    assert events[0] == {"event": "end", "label": "a", "t": 1.0, "score": None}
    assert events[1]["event"] == "start" and events[1]["label"] == "b"
    assert scores == [("b", 0.6)]


def test_results_are_reported_in_window_order() -> None:
    seen = []
    order = InOrder(lambda r: seen.append(r.index))
    results = [WindowResult(i, i, i + 2, 0, "remux", 1, {}, Answer({}, 1), 0.1) for i in range(5)]
    for i in (2, 0, 4, 1, 3):
        order.done(results[i])
    assert seen == [0, 1, 2, 3, 4]


# -- a server slower than the hop ---------------------------------------------------------


def answered_with(delay_s: float, delays=None, keep: Optional[list] = None):
    """The fake's answer: a window of WINDOW s after ``delay_s`` (or ``delays`` in turn). ``keep``:
    the fake's request list, emptied at each request (its bodies are no part of the client's memory)."""
    count = [0]

    def answer(request) -> Reply:
        count[0] += 1
        if keep is not None:
            keep.clear()
        reply = ok(windows=[[0.0, WINDOW]])
        reply.delay_s = delays[count[0] % len(delays)] if delays else delay_s
        return reply

    return answer


def run_live(url: str, source: Path, tmp_path: Path, *flags: str, stats: Optional[list] = None,
             window: float = WINDOW) -> tuple:
    """(exit status, the JSON lines, what was shown); ``stats`` gets the run's LiveStats."""
    out = tmp_path / "live.jsonl"
    stdout = io.StringIO()
    status, counts = live_cli.run([str(source), "--url", url, "--token", "t", "--window", f"{window}", "--out", str(out),
                                   *flags], stdout=stdout)
    if stats is not None:
        stats.append(counts)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return status, lines, stdout.getvalue()


def test_a_slow_server_costs_skipped_windows_not_latency_or_memory(short_stream_file: Path, tmp_path: Path,
                                                                   capsys) -> None:
    delay = 1.0
    samples = []
    tracemalloc.start()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append(tracemalloc.get_traced_memory()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        received: list = []
        counts: list = []
        with FakeTorchServe(answered_with(delay, keep=received), requests=received) as fake:
            status, lines, _ = run_live(fake.url, short_stream_file, tmp_path, "--realtime", "--hop", "0.25", stats=counts)
    finally:
        stop.set()
        sampler.join()
        tracemalloc.stop()
    err = capsys.readouterr().err
    windows = [line for line in lines if "window" in line]
    assert status == 0
    # 7 s of stream, the first window after 2.13 s, a hop every 0.25 s: ~20 hops, one answer per 1 s
    # (a queue instead of skipping would wait > 2 s by the third window).
    skipped = int(err.split("skipped ")[1].split()[0])
    assert skipped >= 8, err
    assert 3 <= len(windows) <= 7, err
    latencies = [line["latency_ms"] / 1000 for line in windows]
    assert max(latencies) < delay + 1.0, latencies  # never the queue's wait, only the answer's time
    assert [line["window"] for line in windows] == list(range(len(windows)))
    # The buffer held a window and at most one keyframe interval (1 s) of the stream, not the 7 s read,
    # and at most `concurrency` clips were out at once.
    assert counts[0].buffer_seconds_max <= WINDOW + 1.0 + 2 / FPS, counts[0]
    assert counts[0].in_flight_max == 1
    # The process's Python memory (the buffer, clips in flight, lines) is flat: 0.4-1.7 MB seen, as
    # clips come and go; what the first half reached, the second does not exceed by more than 1 MB.
    half = len(samples) // 2
    assert max(samples[half:]) - max(samples[:half]) < 2**20, samples


def test_overlapping_windows_are_reported_in_order(short_stream_file: Path, tmp_path: Path, capsys) -> None:
    # Answers take 1.6, 0.2, 0.9 s in turn, a window is due every 0.5 s: later windows overtake earlier ones.
    # 1 s windows: the first is due 1 s into the stream (the model's length is not the point here).
    with FakeTorchServe(answered_with(0, delays=[1.6, 0.2, 0.9])) as fake:
        status, lines, out = run_live(fake.url, short_stream_file, tmp_path, "--realtime", "--hop", "0.5",
                                      "--concurrency", "3", "--max-windows", "8", window=1.0)
        sent = len(fake.requests)
    windows = [line for line in lines if "window" in line]
    assert status == 0 and len(windows) == 8 and sent == 8
    assert "skipped 0 " in capsys.readouterr().err  # one at a time, the 1.6 s answers would have cost hops
    assert [line["window"] for line in windows] == list(range(8))
    assert [line["start"] for line in windows] == sorted(line["start"] for line in windows)
    assert len(out.strip().splitlines()) == 8  # a line a window (notes and the summary: stderr)


def test_a_file_without_realtime_waits_for_the_server_instead_of_skipping(stream_file: Path, tmp_path: Path, capsys) -> None:
    with FakeTorchServe(answered_with(0.3)) as fake:
        status, lines, _ = run_live(fake.url, stream_file, tmp_path, "--hop", "2")
        bodies = [r.body for r in fake.requests]
    windows = [line for line in lines if "window" in line]
    assert status == 0 and "skipped 0 " in capsys.readouterr().err
    assert [round(line["end"] - line["start"], 4) for line in windows] == [round(WINDOW, 4)] * len(windows)
    assert len(windows) == 5  # ends at 2.16, 4.16, ... 10.16 s of 12 s
    assert all(line["mode"] == "remux" and line["clip_bytes"] == len(body) for line, body in zip(windows, bodies))


def test_reencode_sends_frames_at_the_short_side(stream_file: Path, tmp_path: Path) -> None:
    with FakeTorchServe(answered_with(0.0)) as fake:
        status, lines, _ = run_live(fake.url, stream_file, tmp_path, "--hop", "3", "--reencode", "--short-side", "128",
                                    "--max-windows", "2")
        bodies = [r.body for r in fake.requests]
    assert status == 0 and [line["mode"] for line in lines] == ["encode", "encode"]
    frames = decoded(bodies[0])
    assert frames[0][1].shape[:2] == (128, 170)
    assert abs(len(frames) - WINDOW * FPS) <= 1


def test_ctrl_c_stops_with_a_summary(stream_file: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from harness.torchserve import REPO

    with FakeTorchServe(answered_with(0.2)) as fake:
        process = subprocess.Popen(
            # Short windows and hops: two answers within a second of stream (the length is not the point here).
            [sys.executable, "-m", "client", "live", str(stream_file), "--realtime", "--url", fake.url, "--token", "t",
             "--window", "0.5", "--hop", "0.25", "--out", str(tmp_path / "live.jsonl")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(fake.requests) < 2:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err and "windows sent" in err and "latency from a window's last frame" in err, err
    assert "Traceback" not in err
    lines = (tmp_path / "live.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_on_a_terminal_the_table_is_redrawn_in_place() -> None:
    from client.live.report import Display
    from client.live.runner import LiveStats

    screen, notes = io.StringIO(), io.StringIO()
    display = Display(screen, notes, tty=True, topk=2)
    result = WindowResult(0, 1.0, 3.13, 0, "remux", 10, {}, Answer({}, 1), 0.5)
    display.window(result, [("waving", 0.6), ("clapping", 0.3)], LiveStats(sent=1), smoothed=False)
    assert screen.getvalue().count("\n") == 3 and "waving" in screen.getvalue()
    display.window(result, [("clapping", 0.7), ("waving", 0.2)], LiveStats(sent=2), smoothed=False)
    assert "\x1b[3F\x1b[J" in screen.getvalue()  # back up over the 3 lines drawn, clear, draw anew
    display.note("stream dropped")
    assert notes.getvalue() == "stream dropped\n" and screen.getvalue().endswith("\x1b[3F\x1b[J")


def test_a_jump_in_the_streams_timestamps_starts_a_new_segment(tmp_path: Path) -> None:
    from fractions import Fraction

    from client.live.source import Connected, Reader

    path = tmp_path / "gap.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"g": "25", "bf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for k in list(range(0, 3 * FPS)) + list(range(8 * FPS, 11 * FPS)):  # 3 s, 5 s missing, 3 s
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), k % 255, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    events = list(Reader(parse_source(str(path)), reencode=False, short_side=256).events())
    connected = [i for i, e in enumerate(events) if isinstance(e, Connected)]
    assert len(connected) == 2 and "jumped" in events[connected[1]].note
    before = [e for e in events[: connected[1]] if isinstance(e, PacketRecord)]
    after = [e for e in events[connected[1]:] if isinstance(e, PacketRecord)]
    assert len(before) == len(after) == 3 * FPS
    assert after[0].keyframe and after[0].stream_t - before[-1].stream_t == pytest.approx(5.04, abs=0.01)
    assert after[0].t - before[-1].t == pytest.approx(5.04, abs=0.01)  # a file read at speed keeps its own clock


def test_json_lines_on_stdout_move_the_table_to_stderr(stream_file: Path, capsys) -> None:
    stdout = io.StringIO()
    with FakeTorchServe(answered_with(0.0)) as fake:
        status = live_cli.main([str(stream_file), "--url", fake.url, "--token", "t", "--window", f"{WINDOW}",
                                "--hop", "4", "--out", "-"], stdout=stdout)
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    err = capsys.readouterr().err
    assert status == 0 and [line["window"] for line in lines] == [0, 1, 2]
    assert err.count("latency") >= 3 and "texting" in err  # the per-window lines, beside the notes


def test_threshold_events_are_written_between_the_windows(stream_file: Path, tmp_path: Path) -> None:
    scores = iter([0.9, 0.8, 0.2, 0.1, 0.7])

    def answer(request) -> Reply:
        return ok([{"label": "waving", "index": 1, "probability": next(scores)}], windows=[[0.0, WINDOW]])

    with FakeTorchServe(answer) as fake:
        status, lines, _ = run_live(fake.url, stream_file, tmp_path, "--hop", "2", "--max-windows", "5",
                                    "--event-threshold", "0.5")
        asked = {r.headers["topk"] for r in fake.requests}
    kinds = [("window", line["window"]) if "window" in line else (line["event"], line["t"]) for line in lines]
    ends = [line["end"] for line in lines if "window" in line]
    assert status == 0 and asked == {str(live_cli.SMOOTHING_TOPK)}
    assert kinds == [("window", 0), ("start", ends[0]), ("window", 1), ("window", 2), ("end", ends[2]),
                     ("window", 3), ("window", 4), ("start", ends[4]), ("end", ends[4])]  # the last closed at the end


def test_raw_frames_like_a_cameras_are_encoded(tmp_path: Path) -> None:
    """A source whose packets are raw frames (what a V4L2 camera gives) is encoded, not remuxed."""
    from fractions import Fraction

    raw = tmp_path / "raw.mkv"
    with av.open(str(raw), "w", format="matroska") as out:
        stream = out.add_stream("rawvideo", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for k in range(4 * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), k * 2 % 255, dtype=np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
    with FakeTorchServe(answered_with(0.0)) as fake:
        status, lines, _ = run_live(fake.url, raw, tmp_path, "--hop", "1", "--short-side", "120")
        bodies = [r.body for r in fake.requests]
    assert status == 0 and len(lines) == 2 and {line["mode"] for line in lines} == {"encode"}
    frames = decoded(bodies[-1])
    assert frames[0][1].shape[:2] == (120, 160) and abs(len(frames) - WINDOW * FPS) <= 1
    assert max(len(b) for b in bodies) < 320 * 240 * 1.5 * 4  # a fraction of the raw window's 6 MB


def test_the_window_is_asked_of_the_server_and_topk_fits_its_classes(stream_file: Path, tmp_path: Path) -> None:
    def answer(request) -> Reply:
        if int(request.headers["topk"]) > 10:  # a fine-tuned model with 10 classes
            return Reply(400, {"code": 400, "reason": "bad_option", "message": "topk must be in 1..10, got 20"})
        return ok(windows=[[6.9333, 9.0667]])  # the server's window in the 16 s probe: 2.1334 s

    out = tmp_path / "live.jsonl"
    with FakeTorchServe(answer) as fake:
        status = live_cli.main([str(stream_file), "--url", fake.url, "--token", "t", "--average", "2", "--hop", "5",
                                "--out", str(out)], stdout=io.StringIO())
        probes = [r for r in fake.requests if r.headers.get("clips") == "1"]
        windows = [r for r in fake.requests if "start" in r.headers]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert status == 0 and [p.headers["topk"] for p in probes] == ["20", "10"]
    assert {w.headers["topk"] for w in windows} == {"10"} and len(lines) == 2
    assert all(round(line["end"] - line["start"], 4) == 2.1334 for line in lines)
