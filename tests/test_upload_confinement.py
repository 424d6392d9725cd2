"""Only the bytes a client sent are ever read (issue 25, point 1).

FFmpeg follows what a file names: a concat playlist opens the files it lists, an SDP description
opens RTP/UDP sockets. Each hostile body below is first shown to do that when opened as the handler
opened uploads before (plain ``av.open``: the positive control, so these tests can fail), then
shown to be refused by ``open_container`` with 415 ``unsupported_container`` naming the format, in
under 100 ms, having opened no file and no socket.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import List

import av
import pytest

from handler.body_reader import BodyReader
from handler.decoding.containers import ALLOWED_DEMUXERS, STILL_IMAGE_FORMATS, is_allowed, probed_format
from handler.decoding.source import open_container
from handler.errors import RequestError
from harness.synth import make_video

REFUSE_WITHIN_S = 0.1  # the bound for a refusal


def _concat(path: str) -> bytes:
    return f"ffconcat version 1.0\nfile '{path}'\n".encode()


def _sdp(port: int, address: str = "127.0.0.1") -> bytes:
    return (f"v=0\no=- 0 0 IN IP4 {address}\ns=probe\nc=IN IP4 {address}\nt=0 0\n"
            f"m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\n").encode()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _open_fds() -> List[str]:
    return sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}"))


def _refusal(body: bytes) -> RequestError:
    started = time.perf_counter()
    with pytest.raises(RequestError) as caught:
        open_container(body)
    elapsed = time.perf_counter() - started
    assert elapsed < REFUSE_WITHIN_S, f"refused in {elapsed * 1000:.0f} ms"
    return caught.value


@pytest.fixture()
def small_video(tmp_path: Path) -> Path:
    path = tmp_path / "worker_file.mp4"
    path.write_bytes(make_video(frames=10, width=64, height=48, container="mp4", codec="libx264"))
    return path


# -- files --------------------------------------------------------------------------------------


def test_a_concat_playlist_did_read_the_named_file_when_opened_plainly(
    small_video: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Positive control: the attack works on FFmpeg's defaults, so the tests below can fail. (The
    # concat demuxer's `safe` default refuses absolute paths, not names relative to the worker's
    # working directory.)
    monkeypatch.chdir(small_video.parent)
    with av.open(BodyReader(_concat(small_video.name)), metadata_errors="ignore") as container:
        assert container.format.name == "concat"
        assert sum(1 for _ in container.decode(video=0)) == 10


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative-to-cwd"])
def test_a_concat_playlist_naming_a_worker_file_is_refused_unread(
    small_video: Path, relative: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The named path is a FIFO: opening it for reading would block until a writer comes, so a
    # refusal within the time bound proves it was never opened (and never stat-ed as a video).
    fifo = small_video.parent / "named.mp4"
    os.mkfifo(fifo)
    if relative:
        monkeypatch.chdir(small_video.parent)
    error = _refusal(_concat("named.mp4" if relative else str(fifo)))
    assert (error.status, error.reason) == (415, "unsupported_container")
    assert "concat" in error.message and "self-contained" in error.message
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_an_existing_and_a_missing_name_answer_alike(small_video: Path) -> None:
    # No file-existence oracle: the answer does not depend on what the name points to.
    present = _refusal(_concat(str(small_video)))
    absent = _refusal(_concat(str(small_video.parent / "no_such_file.mp4")))
    assert (present.status, present.reason, present.message) == (absent.status, absent.reason, absent.message)


# -- sockets ------------------------------------------------------------------------------------


class PortWatch:
    """Tries to bind a UDP port over and over while running: ``taken`` when someone else held it."""

    def __init__(self, port: int) -> None:
        self.port, self.taken, self._stop = port, False, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind(("127.0.0.1", self.port))
                except OSError:
                    self.taken = True
            time.sleep(0.002)

    def __enter__(self) -> "PortWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_an_sdp_description_did_open_its_port_when_opened_plainly() -> None:
    port = _free_udp_port()
    with PortWatch(port) as watch:
        try:  # FFmpeg listens for RTP until the timeout: the port is held meanwhile
            av.open(BodyReader(_sdp(port)), metadata_errors="ignore", timeout=1.0).close()
        except av.error.FFmpegError:
            pass
    assert watch.taken


def test_an_sdp_description_is_refused_without_opening_a_socket() -> None:
    port = _free_udp_port()
    before = [fd for fd in _open_fds() if fd.startswith("socket:")]
    with PortWatch(port) as watch:
        error = _refusal(_sdp(port))
        time.sleep(0.05)  # the watcher's chance to see a listener, had one been opened
    assert (error.status, error.reason) == (415, "unsupported_container")
    assert "sdp" in error.message
    assert not watch.taken
    assert [fd for fd in _open_fds() if fd.startswith("socket:")] == before


# -- the rest of the class ----------------------------------------------------------------------

OTHER_NAMING_FORMATS: dict = {
    # HLS and DASH manifests, an image2 pattern, protocols that wrap other resources: FFmpeg does
    # not even recognise these from bytes alone (their probes need a file name or URL), so they
    # are not videos (422); were a probe ever to pick them, the allowlist refuses them (415).
    "hls": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{path}\n#EXT-X-ENDLIST\n",
    "dash": b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">'
            b'<Period><AdaptationSet><Representation id="1" bandwidth="1"><BaseURL>{path}</BaseURL>'
            b"</Representation></AdaptationSet></Period></MPD>",
    "image2_pattern": b"{dir}/frame%03d.png",
    "tee_in_concat": b"ffconcat version 1.0\nfile 'tee:{path}|{path}'\n",
    "subfile_in_concat": b"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{path}'\n",
    "concat_protocol": b"ffconcat version 1.0\nfile 'concat:{path}|{path}'\n",
}


@pytest.mark.parametrize("name", sorted(OTHER_NAMING_FORMATS))
def test_bodies_that_name_other_resources_never_open_them(name: str, small_video: Path) -> None:
    body = (OTHER_NAMING_FORMATS[name].replace(b"{path}", str(small_video).encode())
            .replace(b"{dir}", str(small_video.parent).encode()))
    error = _refusal(body)
    assert (error.status, error.reason) in {(415, "unsupported_container"), (422, "not_a_video")}
    detected, _ = probed_format(body, 1 << 20)
    assert detected is None or not is_allowed(detected)


def test_the_allowlist_holds_no_demuxer_that_opens_other_resources() -> None:
    naming = {"concat", "sdp", "rtp", "rtsp", "hls", "dash", "image2", "tee", "ffmetadata", "lavfi",
              "webm_dash_manifest", "imf", "srt", "mpl2", "hds"}
    assert not naming & set(ALLOWED_DEMUXERS)
    assert not set(STILL_IMAGE_FORMATS) & set(ALLOWED_DEMUXERS)


@pytest.mark.parametrize("container, codec, pix_fmt", [
    ("mp4", "libx264", "yuv420p"), ("matroska", "libx264", "yuv420p"), ("webm", "libvpx", "yuv420p"),
    ("avi", "mpeg4", "yuv420p"), ("mpegts", "libx264", "yuv420p"), ("gif", "gif", "rgb8"),
    ("flv", "flv", "yuv420p"), ("ogg", "libtheora", "yuv420p"), ("asf", "wmv2", "yuv420p"),
    ("vob", "mpeg2video", "yuv420p"),
])
def test_every_allowed_video_container_opens(container: str, codec: str, pix_fmt: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    data = make_video(frames=6, width=64, height=48, container=container, codec=codec, pix_fmt=pix_fmt)
    with open_container(data) as opened:
        assert is_allowed(opened.format.name)
        assert len(opened.streams.video) == 1


def test_every_shared_video_still_opens(shared_videos: Path) -> None:
    for path in sorted(shared_videos.iterdir()):
        if path.suffix == ".tsv":
            continue
        try:
            open_container(path.read_bytes()).close()
        except RequestError as error:  # the corrupt file and the audio-only one still open
            pytest.fail(f"{path.name}: {error.status} {error.reason}: {error.message}")


# -- through a real TorchServe -------------------------------------------------------------------


@pytest.mark.integration
def test_the_served_model_refuses_a_playlist(server) -> None:
    # A name relative to the worker's working directory (the concat demuxer's `safe` default
    # refuses absolute ones): a file there was classified, 200, before.
    reply = server.predict(_concat("model.mp4"))
    assert reply.status_code == 415, reply.text
    assert reply.json()["reason"] == "unsupported_container" and "concat" in reply.json()["message"]
