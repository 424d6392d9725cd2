"""The one video synthesizer of tests and benchmark: frames whose content we know, in any codec/container.

``make_video`` encodes frames from ``pattern_frame`` (or any ``frame_source``) and returns the
file's bytes; ``faststart`` and ``mirrored`` derive variants from a file. The benchmark's larger
videos (bench/videos.py) are ``make_video`` with YUV frame sources of their own.
"""

from __future__ import annotations

import io
import re
from fractions import Fraction
from typing import Callable, List, Mapping, Optional, Sequence

import av
import numpy as np


def pattern_frame(index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a gradient with a bright square moving right by 4 px per frame (asymmetric,
    so rotations and flips are visible)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 200, height, dtype=np.uint8)[:, None]
    base[..., 2] = int(rng.integers(0, 255))
    size = max(4, min(height, width) // 6)
    x = (index * 4) % max(1, width - size)
    y = height // 5
    base[y : y + size, x : x + size] = 255
    return base


def make_video(
    *,
    frames: int = 30,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    codec: str = "libx264",
    container: str = "mp4",
    pix_fmt: str = "yuv420p",
    gop: Optional[int] = None,
    pts: Optional[Sequence[int]] = None,
    time_base: Optional[Fraction] = None,
    options: Optional[dict] = None,
    seed: int = 0,
    frame_source: Optional[Callable[[int], np.ndarray]] = None,
    frame_format: str = "rgb24",
    metadata: Optional[Mapping[str, str]] = None,
) -> bytes:
    """Encode ``frames`` pattern frames and return the file's bytes.

    ``pts`` (in ``time_base`` units) gives explicit timestamps, e.g. for variable frame rate.
    ``frame_source(i)`` replaces the default pattern: an (H, W, 3) uint8 array in ``rgb24``, or
    with ``frame_format="yuv420p"`` the (H * 3/2, W) planes (no colour conversion per frame).
    ``metadata``: container tags (e.g. ``{"title": ...}``).
    """
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        output.metadata.update(metadata or {})
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            # Both: the encoder rounds timestamps to its own time base otherwise.
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = dict(options)
        for i in range(frames):
            image = frame_source(i) if frame_source else pattern_frame(i, height, width, seed)
            frame = av.VideoFrame.from_ndarray(image, format=frame_format if frame_source else "rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = time_base or Fraction(1, fps)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def faststart(data: bytes) -> bytes:
    """Remux an MP4 with the index (moov) first, as streaming-friendly encoders write it."""
    import tempfile
    from pathlib import Path

    source = av.open(io.BytesIO(data))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "faststart.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as target:
            stream = target.add_stream_from_template(source.streams.video[0])
            for packet in source.demux(source.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = stream
                target.mux(packet)
        return path.read_bytes()


def mirrored(data: bytes, crf: int = 10) -> bytes:
    """The video mirrored left-right, re-encoded near-losslessly (H.264 in MP4) at its frame rate."""
    with av.open(io.BytesIO(data)) as source:
        stream = source.streams.video[0]
        rate = stream.average_rate or 30
        images = [f.to_ndarray(format="rgb24")[:, ::-1].copy() for f in source.decode(stream)]
    height, width = images[0].shape[:2]
    return make_video(frames=len(images), width=width - width % 2, height=height - height % 2, fps=rate,
                      options={"crf": str(crf), "preset": "ultrafast"},
                      frame_source=lambda i: images[i][: height - height % 2, : width - width % 2])


# -- streams whose decoding depends on state from the stream start (issue 19) ------------------


def _annexb_nal_units(data: bytes) -> List[bytes]:
    """The NAL units of an Annex-B H.264 access unit, without their start codes."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    units = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[start:end]
        units.append(unit.rstrip(b"\x00") if i + 1 < len(starts) else unit)  # a 4-byte start code's zero
    return units


def parameter_sets_changed_mid_stream(parts=((60, {"preset": "ultrafast"}),
                                             (600, {"preset": "superfast", "x264-params": "bframes=0"})),
                                      *, width: int = 320, height: int = 240, fps: int = 30, gop: int = 30) -> bytes:
    """MPEG-TS of H.264 parts encoded with different settings (by default CAVLC, then CABAC), each
    part's SPS/PPS sent once, in its first packet, and not repeated at its later keyframes.

    A decoder that starts at a later keyframe of part 2 holds part 1's parameter sets (the ones
    the demuxer puts in the stream's extradata) and decodes garbage; from the start it is clean.
    Frame i shows ``pattern_frame(i)``; timestamps start at 1 s.
    """
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as output:
        stream = output.add_stream("h264", rate=fps)
        stream.width, stream.height = width, height
        offset = 0
        for count, options in parts:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate, encoder.gop_size = Fraction(1, fps), fps, gop
            encoder.options = dict(options)
            packets = []
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(pattern_frame(offset + i, height, width), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                packets += encoder.encode(frame)
            packets += encoder.encode(None)
            for n, packet in enumerate(packets):
                units = _annexb_nal_units(bytes(packet))
                if n > 0:
                    units = [u for u in units if u[0] & 0x1F not in (7, 8)]  # SPS, PPS
                out = av.Packet(b"".join(b"\x00\x00\x00\x01" + u for u in units))
                out.stream, out.time_base = stream, Fraction(1, 90000)
                ticks = 90000 // fps
                out.pts = (packet.pts + offset) * ticks + 90000
                out.dts = (packet.dts + offset) * ticks + 90000
                out.is_keyframe = packet.is_keyframe
                output.mux(out)
            offset += count
    return buffer.getvalue()


def claiming_old_x264(data: bytes, build: int = 142) -> bytes:
    """``data`` (made by libx264) with the version SEI in its first packet rewritten to claim
    ``x264 - core {build}`` (same length, so every size stays valid).

    FFmpeg's H.264 decoder reads the build from that SEI, once, and for builds before 151 decodes
    4:4:4 CABAC 8x8-transform streams with an old x264 bug's workaround: a decoder that starts at a
    later keyframe never sees the SEI and decodes them differently from one that starts at byte 0.
    """
    marker = b"x264 - core "
    at = data.find(marker)
    if at < 0 or data.find(marker, at + 1) >= 0:
        raise ValueError("expected exactly one x264 version SEI")
    digits = at + len(marker)
    old = data[digits:digits + 3]
    if not old.isdigit() or len(str(build)) != 3:
        raise ValueError(f"expected a 3-digit build, found {old!r}")
    return data[:digits] + str(build).encode() + data[digits + 3:]
