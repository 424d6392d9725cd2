"""One window of a live stream as a small video file the server reads like any upload.

Remux (the default): the compressed packets from the last keyframe at or before the window's start
to its last frame, copied into an MPEG-TS (H.264/HEVC/MPEG-2/MPEG-4) or Matroska (anything else)
file without decoding. Encode (sources whose packets cannot travel alone: raw camera frames, or
``--reencode``): the window's decoded frames, already scaled to the model's short side, as H.264.

Either way the clip comes with the ``start``/``end`` request options (seconds from the clip's first
frame) that make the server look at exactly the window, so its answer is the window's and the same
clip sent alone gets the same answer. A window is the half-open ``[start, end)`` in seconds, ``end``
being the end of its newest frame (that frame's time plus its duration), so that frame is in it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import av

# Codecs an MPEG-TS can carry (what a broadcast or an RTSP camera sends); others go in Matroska.
TS_CODECS = frozenset({"h264", "hevc", "mpeg2video", "mpeg1video", "mpeg4"})
# Codecs whose packets are frames to be encoded, not copied (a V4L2 camera's raw YUV).
NOT_REMUXABLE = frozenset({"rawvideo"})
ENCODE_CODEC = "libx264"
ENCODE_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
TIME_BASE = Fraction(1, 90000)  # MPEG-TS's own clock: packet times are rescaled to it exactly


@dataclass(frozen=True)
class PacketRecord:
    """One compressed packet as read from the source (``data`` copied out of FFmpeg's buffer).

    ``pts``/``dts``/``duration`` are in the source stream's ``time_base`` units (None when the
    container gave none); ``t`` is ``pts`` in seconds on the session's clock, ``stream_t`` in the
    source's own seconds; ``read_at`` the time.monotonic() at which it was read.
    """

    data: bytes
    pts: Optional[int]
    dts: Optional[int]
    duration: int
    keyframe: bool
    t: float
    read_at: float
    stream_t: float = 0.0


@dataclass(frozen=True)
class FrameRecord:
    """One decoded frame scaled to the model's short side (encode mode): ``frame`` is a yuv420p
    ``av.VideoFrame`` of (height, width) with the short side at the model's; ``t``, ``stream_t``
    and ``read_at`` as PacketRecord."""

    frame: av.VideoFrame
    t: float
    read_at: float
    stream_t: float = 0.0


@dataclass(frozen=True)
class StreamFormat:
    """What a clip needs to know of the source's video stream to copy its packets."""

    codec: str
    time_base: Fraction
    width: int
    height: int
    extradata: Optional[bytes]
    pix_fmt: Optional[str] = None

    @property
    def remuxable(self) -> bool:
        return self.codec not in NOT_REMUXABLE

    @property
    def container(self) -> str:
        return "mpegts" if self.codec in TS_CODECS else "matroska"


@dataclass(frozen=True)
class Clip:
    """A clip ready to send: its bytes and the options that point the server at the window."""

    data: bytes
    fields: Dict[str, str]
    start: float  # window start, seconds on the session's clock
    end: float  # window end (the last frame's end)
    last_read_at: float  # time.monotonic() when the window's last frame was read
    mode: str  # "remux" or "encode"
    frames: int  # packets (remux) or frames (encode) in the clip
    container: str = "mpegts"
    partial: bool = False
    stream_offset: float = 0.0  # session time minus the source's own time, for this clip's segment  # the window's start was no longer in the buffer: the clip is shorter


def encode_frames(out: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                  frames: Iterable[av.VideoFrame]) -> None:
    """Encode ``frames`` (each with its pts set) in ``stream`` and mux every packet into ``out``,
    then flush the encoder's delayed packets: the one encode loop of the live client."""
    for frame in frames:
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _window_fields(offset: float, length: float) -> Dict[str, str]:
    # 6 decimals: microseconds, finer than any frame clock; the server's seconds are floats too.
    return {"start": f"{max(offset, 0.0):.6f}", "end": f"{offset + length:.6f}"}


def remux(packets: Sequence[PacketRecord], fmt: StreamFormat, start: float, end: float) -> Clip:
    """``packets`` (decode order, the first a keyframe, the last the window's last frame) as a clip.

    Timestamps are copied exactly (rescaled to the output's clock); the window options are counted
    from the clip's first frame, which is where the server's stream time starts.
    """
    if not packets or not packets[0].keyframe:
        raise ValueError("a remuxed clip starts at a keyframe")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt.container) as out:
        stream = out.add_stream(fmt.codec)
        stream.width, stream.height = fmt.width, fmt.height
        stream.time_base = fmt.time_base
        if fmt.pix_fmt:
            stream.pix_fmt = fmt.pix_fmt
        if fmt.extradata:
            stream.codec_context.extradata = fmt.extradata
        origin_pts = min(p.pts for p in packets if p.pts is not None)
        origin_t = min(p.t for p in packets)
        for record in packets:
            packet = av.Packet(record.data)
            packet.stream = stream
            packet.time_base = fmt.time_base
            packet.pts = None if record.pts is None else record.pts - origin_pts
            packet.dts = None if record.dts is None else record.dts - origin_pts
            packet.duration = record.duration
            packet.is_keyframe = record.keyframe
            out.mux(packet)
    return Clip(buffer.getvalue(), _window_fields(start - origin_t, end - start), start, end,
                max(p.read_at for p in packets), "remux", len(packets), fmt.container, partial=origin_t > start + 1e-6,
                stream_offset=packets[0].t - packets[0].stream_t)


def encode(frames: Sequence[FrameRecord], start: float, end: float) -> Clip:
    """The window's ``frames`` (presentation order, all the same size) as an H.264 clip in MPEG-TS."""
    if not frames:
        raise ValueError("no frames to encode")
    first = frames[0].frame
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream(ENCODE_CODEC, options=dict(ENCODE_OPTIONS))
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        origin = frames[0].t

        def stamped() -> Iterator[av.VideoFrame]:
            for record in frames:
                record.frame.pts = round((record.t - origin) / TIME_BASE)
                record.frame.time_base = TIME_BASE
                yield record.frame

        encode_frames(out, stream, stamped())
    return Clip(buffer.getvalue(), _window_fields(start - origin, end - start), start, end,
                max(f.read_at for f in frames), "encode", len(frames), "mpegts", partial=origin > start + 1e-6,
                stream_offset=frames[0].t - frames[0].stream_t)


def scaled_size(width: int, height: int, short_side: int) -> tuple:
    """(width, height) with the short side at ``short_side`` (aspect kept, even sizes for yuv420p);
    never larger than the source."""
    if min(width, height) <= short_side:
        return width - width % 2, height - height % 2
    if width < height:
        w, h = short_side, round(height * short_side / width)
    else:
        w, h = round(width * short_side / height), short_side
    return w - w % 2, h - h % 2


def to_model_size(frame: av.VideoFrame, short_side: int) -> av.VideoFrame:
    """``frame`` as yuv420p with its short side at ``short_side`` (bilinear, as the server's scaler)."""
    width, height = scaled_size(frame.width, frame.height, short_side)
    return frame.reformat(width=width, height=height, format="yuv420p", interpolation="BILINEAR")


def stream_format(stream: av.video.stream.VideoStream) -> StreamFormat:
    ctx = stream.codec_context
    return StreamFormat(codec=ctx.name, time_base=stream.time_base, width=ctx.width, height=ctx.height,
                        extradata=bytes(ctx.extradata) if ctx.extradata else None,
                        pix_fmt=ctx.pix_fmt)


def packets_of_window(packets: List[PacketRecord], start: float) -> List[PacketRecord]:
    """The packets a remuxed window needs: from the last keyframe at or before ``start`` (else the
    oldest keyframe kept) to the newest, in decode order."""
    first = None
    for index, record in enumerate(packets):
        if record.keyframe:
            if first is None or record.t <= start + 1e-9:
                first = index
            if record.t > start + 1e-9:
                break
    return [] if first is None else packets[first:]
