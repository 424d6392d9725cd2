"""``python -m client live`` against a real TorchServe, with real live protocols on loopback: a file
read as a source, MPEG-TS over UDP written in real time by a PyAV process (dropped and resumed
mid-run), and RTSP through Debian's rtsp-server-perl (skipped when it is not installed).

Each window's answer must equal its clip sent alone, and (a file) the same window of the source
file asked with start/end: compared on the embedding, which depends on the frames even with the
default export's random weights, and on the probabilities, within 1e-4.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest

from client.endpoint import resolve_endpoint
from client.live import cli as live_cli
from client.live.sender import make_stream_file
from client.transport import Answer, Transport
from harness.torchserve import REPO, LocalTorchServe

pytestmark = pytest.mark.integration
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def stream_file(shared_videos: Path, tmp_path_factory) -> Path:
    """12 s of a Kinetics clip as a camera sends it: H.264, 25 fps, a keyframe a second, MPEG-TS."""
    return make_stream_file(shared_videos / "tv__WUzgd7C1pWA.mp4", tmp_path_factory.mktemp("live") / "stream.ts",
                            fps=25, seconds=12.0)


@pytest.fixture(scope="module")
def transport(server: LocalTorchServe) -> Transport:
    return Transport(resolve_endpoint(server.inference_url, key_file=server.workdir / "key_file.json"), timeout=120)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sender(path: Path, url: str, *flags: str) -> subprocess.Popen:
    """A PyAV process writing ``path`` to ``url`` in real time."""
    return subprocess.Popen([sys.executable, "-m", "client.live.sender", str(path), url, *flags], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def live(server: LocalTorchServe, source: str, tmp_path: Path, *flags: str, capsys) -> Tuple[int, List[Dict], str]:
    out = tmp_path / "live.jsonl"
    status = live_cli.main([source, "--url", server.inference_url, "--key-file", str(server.workdir / "key_file.json"),
                            "--out", str(out), "--save-clips", str(tmp_path / "clips"), "--output", "both",
                            "--timeout", "120", *flags], stdout=io.StringIO())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return status, [line for line in lines if "window" in line], capsys.readouterr().err


def saved_clip(tmp_path: Path, line: Dict) -> bytes:
    return (tmp_path / "clips" / f"window_{line['window']:06d}.ts").read_bytes()


def assert_same_answer(line: Dict, body: Dict) -> None:
    got = {p["index"]: p["probability"] for p in line["predictions"]}
    alone = {p["index"]: p["probability"] for p in body["predictions"]}
    assert got.keys() == alone.keys()
    assert max(abs(got[k] - alone[k]) for k in got) <= TOLERANCE
    difference = np.abs(np.asarray(line["embedding"]["values"]) - np.asarray(body["embedding"]["values"])).max()
    assert difference <= TOLERANCE, difference


def ask(transport: Transport, data: bytes, fields: Dict[str, str]) -> Dict:
    outcome = transport.send(data, {"topk": "5", "output": "both", **fields})
    assert isinstance(outcome, Answer), outcome
    return outcome.body


def test_a_files_windows_are_the_files_own_windows(server, transport, stream_file: Path, tmp_path: Path,
                                                   contract, capsys) -> None:
    status, windows, err = live(server, str(stream_file), tmp_path, "--hop", "4", "--max-windows", "2", capsys=capsys)
    assert status == 0 and len(windows) == 2, err
    # The window was asked of the server, not assumed: the model file's own value (to the answer's rounding).
    asked = float(re.search(r"window ([\d.]+) s \(the model's", err).group(1))
    assert asked == pytest.approx(contract.window_seconds, abs=2e-4)
    for line in windows:
        assert line["mode"] == "remux" and line["end"] - line["start"] == pytest.approx(asked, abs=1e-3)
        if line["window"] == 0:  # (the clips sent alone: also in the UDP and RTSP tests)
            assert_same_answer(line, ask(transport, saved_clip(tmp_path, line), line["clip_options"]))
        whole = ask(transport, stream_file.read_bytes(),
                    {"start": f"{line['stream_start']:.6f}", "end": f"{line['stream_end']:.6f}"})
        assert_same_answer(line, whole)


def test_udp_stream_dropped_and_resumed(server, transport, stream_file: Path, tmp_path: Path, contract, capsys) -> None:
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    first = sender(stream_file, url, "--stop-at", "6")
    try:
        def resume() -> None:
            first.wait(30)
            time.sleep(3.0)  # the behaviour under test: a 3 s gap in the live stream
            resume.process = sender(stream_file, url, "--start-at", "6")

        resume.process = None
        import threading

        thread = threading.Thread(target=resume, daemon=True)
        thread.start()
        status, windows, err = live(server, url, tmp_path, "--window", f"{contract.window_seconds}", "--hop", "1",
                                    # two in flight: a slow answer from before the gap must not cost every window after it
                                    "--concurrency", "2", "--stall-timeout", "1.5", "--duration", "17", capsys=capsys)
        thread.join(5)
    finally:
        for process in (first, getattr(resume, "process", None)):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert status == 0, err
    assert "stream dropped" in err and "reconnected" in err, err
    segments = {line["segment"] for line in windows if line["status"] == "ok"}
    assert 0 in segments and max(segments) >= 1, (segments, err)  # windows answered before and after the gap
    assert [line["window"] for line in windows] == list(range(len(windows)))
    hops = [b["end"] - a["end"] for a, b in zip(windows, windows[1:]) if a["segment"] == b["segment"]]
    assert all(hop >= 1.0 - 0.05 for hop in hops), hops
    # A window each side of the gap, sent alone, answers the same.
    for segment in (0, max(segments)):
        line = next(w for w in windows if w["segment"] == segment and w["status"] == "ok")
        assert_same_answer(line, ask(transport, saved_clip(tmp_path, line), line["clip_options"]))


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[Tuple[int, int]]:
    program = shutil.which("rtsp-server-perl")
    if program is None:
        pytest.skip("rtsp-server-perl not installed (Debian: apt-get install rtsp-server-perl; `make install` tries it)")
    client_port, source_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    process = subprocess.Popen([program, "-c", str(client_port), "-s", str(source_port), "-l", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", source_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        yield client_port, source_port
    finally:
        process.kill()
        process.wait()


def test_rtsp_through_a_relay(server, transport, stream_file: Path, tmp_path: Path, contract, rtsp_server, capsys) -> None:
    client_port, source_port = rtsp_server
    # rtsp-server-perl takes a published stream over RTP/UDP only, and relays it the same way.
    publisher = sender(stream_file, f"rtsp://127.0.0.1:{source_port}/live")
    try:
        status, windows, err = live(server, f"rtsp://127.0.0.1:{client_port}/live", tmp_path, "--rtsp-transport", "udp",
                                    "--window", f"{contract.window_seconds}", "--hop", "1", "--max-windows", "2",
                                    "--give-up", "8", capsys=capsys)
    finally:
        publisher.kill()
        publisher.wait()
    assert status == 0, err
    assert "in rtsp" in err and len(windows) == 2, err
    assert all(line["status"] == "ok" and line["mode"] == "remux" for line in windows)
    line = windows[-1]
    assert_same_answer(line, ask(transport, saved_clip(tmp_path, line), line["clip_options"]))
