"""Read a live source packet by packet, reconnecting when it drops.

SOURCE is a stream URL (``rtsp://``, ``rtmp://``, ``udp://``, ``srt://``, ``http(s)://``...), a V4L2
device (``/dev/video0``) or a file (read as fast as it decodes, or at its own pace with
``realtime``). Times are put on one session clock: seconds from the session's first frame. A
connection (or a jump in the stream's own timestamps) starts a new *segment*, whose first frame is
placed at the wall-clock time it arrived, so windows never mix two segments' packets.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Union

import av

from client.endpoint import ClientError
from client.live.clip import FrameRecord, PacketRecord, StreamFormat, stream_format, to_model_size

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp", "http", "https", "hls")
JUMP_BACK_S = 1.0  # timestamps going back more than this (B-frames reorder less): a new segment
JUMP_AHEAD_S = 2.0  # or forward more than this: stream lost (a sender that stopped and came back) or skipped


@dataclass(frozen=True)
class SourceSpec:
    """Where to read: ``url`` as FFmpeg takes it, ``kind`` (stream, device, file), the demuxer
    (None: FFmpeg guesses), and whether a file is paced to its timestamps."""

    url: str
    kind: str
    format: Optional[str] = None
    realtime: bool = False

    @property
    def live(self) -> bool:
        """Data arrives at its own pace (windows are skipped, not waited for)."""
        return self.kind != "file" or self.realtime


def parse_source(source: str, realtime: bool = False) -> SourceSpec:
    """What kind of source ``source`` is.
    Raises:
        ClientError: an unknown scheme or a path that does not exist.
    """
    if "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme == "file":
            return parse_source(source[len("file://"):], realtime)
        if scheme not in STREAM_SCHEMES:
            raise ClientError(f"unknown stream scheme {scheme!r} in {source!r}: use one of {', '.join(STREAM_SCHEMES)}")
        return SourceSpec(source, "stream")
    if source.startswith("/dev/video"):
        return SourceSpec(source, "device", format="v4l2")
    if not Path(source).is_file():
        raise ClientError(f"{source}: no such file (a stream needs its scheme, e.g. rtsp://...; a camera /dev/videoN)")
    return SourceSpec(source, "file", realtime=realtime)


def open_options(spec: SourceSpec, rtsp_transport: str = "tcp") -> Dict[str, str]:
    """Demuxer/protocol options: TCP for RTSP (no lost UDP packets on a busy host), a large UDP
    buffer that drops on overrun instead of failing, a short probe so a (re)connection starts fast."""
    options: Dict[str, str] = {"analyzeduration": "1000000", "probesize": "1000000"}
    if spec.url.startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = rtsp_transport
    if spec.url.startswith("udp://"):
        options.update(overrun_nonfatal="1", fifo_size="100000")
    return options


@dataclass(frozen=True)
class Connected:
    format: StreamFormat
    segment: int
    note: str


@dataclass(frozen=True)
class Dropped:
    reason: str
    retry_in: Optional[float]  # None: the source ended (a file), no retry


Event = Union[Connected, Dropped, PacketRecord, FrameRecord]


@dataclass
class Reader:
    """Events from ``spec``: Connected, then its packets, or its frames scaled to ``short_side``
    when they are to be encoded (``reencode``, or a codec whose packets cannot be copied: raw
    camera frames); Dropped when it stops; then again after a backoff, until stopped.

    ``give_up_s``: stop after this long without a connection (None: keep trying until stopped).
    """

    spec: SourceSpec
    reencode: bool
    short_side: int
    stall_timeout: float = 5.0
    open_timeout: Optional[float] = None  # None: the stall timeout
    backoff: float = 0.5
    max_backoff: float = 8.0
    give_up_s: Optional[float] = None
    rtsp_transport: str = "tcp"
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stopped: bool = False

    def __post_init__(self) -> None:
        self.segment = -1
        self.session_origin: Optional[float] = None  # clock() when the session's first frame was read

    def events(self) -> Iterator[Event]:
        attempt = 0
        last_data = self.clock()
        while not self.stopped:
            got_data = False
            try:
                for event in self._connection():
                    if not isinstance(event, Connected):
                        got_data = True
                    yield event
                if self.stopped:
                    return
                if self.spec.kind == "file":
                    yield Dropped("end of file", None)
                    return
                reason = "the stream ended"
            except av.error.ExitError:  # PyAV's timeout interrupted a read or an open
                reason = f"no data for {self.stall_timeout:g} s"
            except (av.error.FFmpegError, OSError) as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
            if got_data:
                attempt, last_data = 0, self.clock()
            attempt += 1
            if self.spec.kind == "file" and not got_data:
                raise ClientError(f"cannot read {self.spec.url}: {reason}")
            if self.give_up_s is not None and self.clock() - last_data > self.give_up_s:
                yield Dropped(f"{reason}; giving up after {self.give_up_s:g} s without data", None)
                return
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.75 + 0.25 * random.random())
            yield Dropped(reason, delay)
            self.sleep(delay)

    def _new_segment(self, read_at: float, stream_time: Optional[float]) -> float:
        """The session time at which a new segment's first frame is placed: when it arrived (a live
        source), or where the file's own timestamps put it (``stream_time``, a file read at speed)."""
        self.segment += 1
        if self.session_origin is None:
            self.session_origin = read_at
        if stream_time is not None and not self.spec.live:
            return stream_time
        return read_at - self.session_origin

    def _connection(self) -> Iterator[Event]:
        options = open_options(self.spec, self.rtsp_transport)
        with av.open(self.spec.url, format=self.spec.format, options=options,
                     timeout=(self.open_timeout or self.stall_timeout, self.stall_timeout)) as container:
            if not container.streams.video:
                raise ClientError(f"{self.spec.url} has no video stream")
            stream = container.streams.video[0]
            fmt = stream_format(stream)
            decode = self.reencode or not fmt.remuxable
            if decode:
                stream.thread_type = "AUTO"
            time_base = float(stream.time_base)
            rate = stream.average_rate or stream.guessed_rate
            frame_s = 1.0 / float(rate) if rate and 0 < float(rate) < 1000 else 0.04
            yield Connected(fmt, self.segment + 1,
                            f"{fmt.codec} {fmt.width}x{fmt.height} in {container.format.name}"
                            + (f", {float(rate):.3g} fps" if rate else "")
                            + (f"; windows encoded at short side {self.short_side}" if decode else "; windows remuxed"))
            origin_ts: Optional[int] = None  # the segment's first timestamp (stream units)
            origin_t = 0.0
            last_t: Optional[float] = None
            paced_from: Optional[float] = None
            previous: Optional[tuple] = None  # (origin_ts, origin_t, last_t) of the segment before a jump
            for packet in container.demux(stream):
                if self.stopped:
                    return
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or not packet.size:
                    continue
                read_at = self.clock()
                if origin_ts is not None:
                    t = origin_t + (ts - origin_ts) * time_base
                    if t < last_t - JUMP_BACK_S or t > last_t + JUMP_AHEAD_S:
                        previous = (origin_ts, origin_t, last_t)
                        origin_ts, last_t = None, None  # the stream's clock jumped: a segment of its own
                        yield Connected(fmt, self.segment + 1, "the stream's timestamps jumped: a new segment")
                if origin_ts is None:
                    if not packet.is_keyframe and not decode:
                        continue  # nothing before a segment's first keyframe can be decoded
                    continued = None if previous is None else max(
                        previous[1] + (ts - previous[0]) * time_base, previous[2] + frame_s)
                    origin_ts, origin_t = ts, self._new_segment(read_at, continued)
                    if paced_from is None:
                        paced_from = read_at - origin_t
                t = origin_t + (ts - origin_ts) * time_base
                last_t = t if last_t is None else max(last_t, t)
                if self.spec.realtime:
                    wait = t - (self.clock() - paced_from)
                    if wait > 0:
                        self.sleep(wait)
                    read_at = self.clock()
                if not decode:
                    duration = packet.duration or round(frame_s / time_base)
                    yield PacketRecord(bytes(packet), packet.pts if packet.pts is not None else ts, packet.dts,
                                       duration, packet.is_keyframe, t, read_at, ts * time_base)
                    continue
                for frame in stream.decode(packet):
                    if frame.pts is None:
                        continue
                    frame_t = origin_t + (frame.pts - origin_ts) * time_base
                    yield FrameRecord(to_model_size(frame, self.short_side), frame_t, read_at, frame.pts * time_base)
