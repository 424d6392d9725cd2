"""A catalogue of synthesized inputs with the outcome each must get (issue 3's list).

``CASES[name]() -> bytes`` builds the input (cached); ``EXPECTED[name]`` is ``200`` or
``(status, reason)``. Truncations are listed separately: what survives of a cut file depends
on where the cut falls, so they must get a 200 or a 4xx, never a 5xx.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zipfile
from fractions import Fraction
from typing import Callable, Dict, Tuple, Union

import av
import numpy as np

from harness.synth import faststart, make_video, pattern_frame

Expected = Union[int, Tuple[int, str]]
X264_FAST = {"preset": "ultrafast"}


def _h264(**kw) -> bytes:
    return make_video(codec="libx264", options=X264_FAST, **kw)


def _vfr() -> bytes:
    # 40 frames whose gaps alternate 10 ms and 90 ms (mean 20 fps), millisecond time base.
    pts, t = [], 0
    for i in range(40):
        pts.append(t)
        t += 10 if i % 2 == 0 else 90
    return make_video(frames=40, container="matroska", codec="libx264", pts=pts,
                      time_base=Fraction(1, 1000), options=X264_FAST)


def _far_start() -> bytes:
    # First timestamp 10 hours in (as in recordings cut from long streams).
    offset = 10 * 3600 * 1000
    return make_video(frames=45, container="matroska", codec="libx264", pts=[offset + 33 * i for i in range(45)],
                      time_base=Fraction(1, 1000), options=X264_FAST)


def _no_initial_keyframe() -> bytes:
    # An MPEG-TS cut in the middle of a GOP: the first frames reference a keyframe that is gone.
    whole = make_video(frames=120, container="mpegts", codec="libx264", gop=60, options=X264_FAST)
    packets = len(whole) // 188
    return whole[(packets // 3) * 188 :]


def _non_utf8_metadata() -> bytes:
    data = bytearray(_h264_with_title("caf\u00e9 CLIP"))
    marker = "caf\u00e9".encode("utf-8")
    index = data.find(marker)
    if index < 0:
        raise RuntimeError("title not found in the synthesized file")
    data[index : index + len(marker)] = b"caf\xe9\xff"  # latin-1 + an invalid byte: not UTF-8
    return bytes(data)


def _h264_with_title(title: str) -> bytes:
    return make_video(frames=20, width=160, height=120, container="matroska", options=X264_FAST,
                      metadata={"title": title})


def _huge_declared(side: int) -> bytes:
    """A 64x64 MJPEG AVI whose headers (container and JPEG) declare side x side frames."""
    small = make_video(frames=2, width=64, height=64, codec="mjpeg", container="avi", pix_fmt="yuvj420p")
    data = bytearray(small)
    data = data.replace(struct.pack("<II", 64, 64), struct.pack("<II", side, side))
    sof = data.find(b"\xff\xc0")
    while sof >= 0:
        data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
        sof = data.find(b"\xff\xc0", sof + 2)
    return bytes(data)


def _still(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pattern_frame(0, 120, 160)).save(buffer, format=fmt)
    return buffer.getvalue()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("clip.txt", "not a video" * 100)
    return buffer.getvalue()


def _audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


CASES: Dict[str, Callable[[], bytes]] = {
    "mp4_h264": lambda: _h264(frames=45),
    "mov_h264": lambda: make_video(frames=45, container="mov", codec="libx264", options=X264_FAST),
    "mkv_hevc": lambda: make_video(frames=30, container="matroska", codec="libx265", options={"preset": "ultrafast", "x265-params": "log-level=error"}),
    "webm_vp8": lambda: make_video(frames=30, container="webm", codec="libvpx"),
    "webm_vp9": lambda: make_video(frames=30, container="webm", codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
    "mkv_av1": lambda: make_video(frames=20, width=320, height=240, container="matroska", codec="libsvtav1", options={"preset": "12"}),
    "avi_mpeg4": lambda: make_video(frames=45, container="avi", codec="mpeg4"),
    "ts_h264": lambda: make_video(frames=45, container="mpegts", codec="libx264", options=X264_FAST),
    "gif": lambda: make_video(frames=12, width=160, height=120, fps=10, container="gif", codec="gif", pix_fmt="rgb8"),
    "h264_yuv444p": lambda: _h264(frames=30, pix_fmt="yuv444p"),
    "h264_10bit": lambda: _h264(frames=30, pix_fmt="yuv420p10le"),
    "hevc_10bit": lambda: make_video(frames=20, container="mp4", codec="libx265", pix_fmt="yuv420p10le", options={"preset": "ultrafast", "x265-params": "log-level=error"}),
    "prores_10bit": lambda: make_video(frames=10, container="mov", codec="prores", pix_fmt="yuv422p10le"),
    "one_frame": lambda: _h264(frames=1),
    "three_frames": lambda: _h264(frames=3),
    "tenth_second": lambda: _h264(frames=6, fps=60),
    "vfr": _vfr,
    "far_start": _far_start,
    "no_initial_keyframe": _no_initial_keyframe,
    "non_utf8_metadata": _non_utf8_metadata,
    "unaligned_size": lambda: _h264(frames=20, width=162, height=98),
    "random_bytes": lambda: np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
    "png_still": lambda: _still("PNG"),
    "jpeg_still": lambda: _still("JPEG"),
    "zip": _zip,
    "json_as_bytes": lambda: json.dumps({"video": "clip.mp4"}).encode(),
    "audio_only": _audio_only,
    # FFmpeg itself refuses 30000x30000 (over its own size ceiling): undecodable, refused at once.
    "huge_declared_30k": lambda: _huge_declared(30000),
    # 16000x16000 passes FFmpeg's ceiling: our pixel limit refuses it before any frame is allocated.
    "huge_declared_16k": lambda: _huge_declared(16000),
}

EXPECTED: Dict[str, Expected] = {name: 200 for name in CASES}
EXPECTED.update(
    {
        "random_bytes": (422, "not_a_video"),
        "png_still": (415, "still_image"),
        "jpeg_still": (415, "still_image"),
        "zip": (422, "not_a_video"),
        "json_as_bytes": (400, "bad_json"),
        "audio_only": (422, "no_video_stream"),
        "huge_declared_30k": (422, "no_frames"),
        "huge_declared_16k": (413, "frame_too_large"),
    }
)


@functools.lru_cache(maxsize=None)
def build(name: str) -> bytes:
    return CASES[name]()


def truncations(data: bytes, fractions=(0.01, 0.3, 0.7, 0.99)) -> Dict[str, bytes]:
    return {f"cut_{int(f * 100)}pct": data[: max(1, int(len(data) * f))] for f in fractions}


# -- seek-hostile streams (issue 9) ---------------------------------------------------------
# Each frame tells which frame it is: flat gray halves, left 4 * (index % 60), right
# 4 * (index // 60), lossless (steps of 4 survive the RGB -> limited-range YUV round trip).
# Builders return (file bytes, (index, seconds from the stream's first frame) of every frame in
# the file, the index of the first frame that can be decoded at all).

SeekHostile = Tuple[bytes, Tuple[Tuple[int, float], ...], int]
X265_LOSSLESS = "lossless=1:log-level=error"


def gray_level(index: int, height: int = 180, width: int = 320) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = 4 * (index % 60)
    image[:, width // 2 :] = 4 * (index // 60)
    return image


def frame_index(frame) -> int:
    """The index ``gray_level`` drew into an (H, W, 3) frame (any size, tensor or array)."""
    width = frame.shape[1]
    left, right = frame[:, : width // 4].float().mean(), frame[:, 3 * width // 4 :].float().mean()
    return int(round(float(left) / 4)) + 60 * int(round(float(right) / 4))


def _gray(frames: int, codec: str, container: str, fps: int, first_s: float, options: dict,
          gop: int = None) -> bytes:
    tick = Fraction(1, 90000)
    pts = [round((first_s + i / fps) * 90000) for i in range(frames)]
    return make_video(frames=frames, width=320, height=180, fps=fps, codec=codec, container=container,
                      pts=pts, time_base=tick, options=options, gop=gop, frame_source=gray_level)


def _times(frames: int, fps: int, first: int = 0) -> Tuple[Tuple[int, float], ...]:
    return tuple((i, (i - first) / fps) for i in range(first, frames))


def _ts_cut_mid_gop() -> SeekHostile:
    # 8 s of H.264 in TS with a keyframe every 2 s, cut 0.7 s into a GOP: the stream starts with
    # 1.3 s of frames whose keyframe is gone (no keyframe in the first second).
    whole = _gray(240, "libx264", "mpegts", 30, 1.48, {"preset": "ultrafast", "qp": "0", "bf": "2"}, gop=60)
    container = av.open(io.BytesIO(whole))
    cut_at = next(p.pos for p in container.demux(video=0) if p.pts is not None and p.pts >= round((1.48 + 0.7) * 90000))
    data = whole[cut_at - cut_at % 188:]
    return data, _times(240, 30, first=21), 60  # frame 21 (0.7 s) comes first; frame 60 is the keyframe


def _mp4_index_past_data() -> SeekHostile:
    # 10 s with the index first (moov before mdat) cut after 35%: the index lists 300 frames, the
    # data holds about a third of them.
    whole = faststart(make_video(frames=300, width=320, height=180, codec="libx264", gop=30,
                                 frame_source=gray_level, options={"preset": "ultrafast", "qp": "0"}))
    return whole[: int(len(whole) * 0.35)], _times(300, 30), 0


OPEN_GOP = {"preset": "ultrafast", "x265-params": "keyint=30:min-keyint=30:open-gop=1:bframes=3:" + X265_LOSSLESS}

SEEK_HOSTILE: Dict[str, Callable[[], SeekHostile]] = {
    # The case, smaller: HEVC in MPEG-TS, 5 s at 24 fps, first timestamp 1.48 s, one GOP.
    "ts_hevc_start_1_48": lambda: (_gray(120, "libx265", "mpegts", 24, 1.48, {"preset": "ultrafast", "x265-params": X265_LOSSLESS}), _times(120, 24), 0),
    "ts_h264_start_1_48": lambda: (_gray(120, "libx264", "mpegts", 24, 1.48, {"preset": "ultrafast", "qp": "0"}), _times(120, 24), 0),
    # Open GOPs (CRA pictures with leading B-frames), a keyframe every second.
    "ts_hevc_open_gop": lambda: (_gray(150, "libx265", "mpegts", 30, 1.48, OPEN_GOP), _times(150, 30), 0),
    "mp4_hevc_open_gop": lambda: (_gray(150, "libx265", "mp4", 30, 0.0, OPEN_GOP), _times(150, 30), 0),
    "ts_h264_no_keyframe_first_second": _ts_cut_mid_gop,
    "mp4_index_past_data": _mp4_index_past_data,
}


@functools.lru_cache(maxsize=None)
def build_seek_hostile(name: str) -> SeekHostile:
    return SEEK_HOSTILE[name]()
