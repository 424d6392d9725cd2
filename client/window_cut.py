"""Send the window, not the file: the part of a video that a request's windows need, cut without
re-encoding, with the options that point the server at the same frames.

A request for some windows (the centre window, ``clips`` spread over the video, a ``start``/``end``
part, a timeline of a part) reads a few seconds of a video that may last an hour. The client cuts,
for each place a window may lie, the compressed packets from the keyframe at or before it to its
end (``client.live.clip.remux``, the live client's own remuxer: packets copied, timestamps kept),
one cut for the whole request with gaps between its segments (the server decodes each window from
its keyframe, as it would in the whole file). It sends the source's clock with it:
``source_offset`` (the source's second at the cut's first frame) and ``source_duration``, so that the
server plans the windows over the whole video, exactly as for the file itself, and names them and
the duration in the source's clock.

The client does not know the model's window length: it covers every window a model of up to
``MAX_WINDOW_SECONDS`` could plan (a centre window is centred whatever its length; clip i of N
starts between ``(D - W) i / N`` and ``D i / N``). Times come from the server's own reader
(``handler.decoding.seek.StreamReader``): the same first-frame time and duration the server finds.

The whole file is sent instead (``WholeFile`` says why) when the cut could not be proven to hold the
same frames at the same times: no video stream, no seekable keyframe index, packets without
timestamps, a clock the cut's container cannot carry exactly, a rotation (display matrix) the
MPEG-TS cut would lose, a codec whose keyframes need state from the stream start (MPEG-4 Part 2
in AVI) or that no test covers, damaged packets, or a cut not much smaller than the file.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Tuple, Union

import av

from client.live.clip import PacketRecord, remux, stream_format
from client.transport import Answer, Outcome, Transport

# The longest window the client covers: above the longest of the variants served here
# (slowfast_16x8_r101_50_50: 128/30 s). A model with a longer window plans one outside the cut; the
# server answers 400 window_outside_upload and the client sends the whole file (``send_video``).
MAX_WINDOW_SECONDS = 5.0
# Packets are kept this far past a window's end (decode order: a few B-frames may follow the
# frame that ends it), and a window may end this far past what the client thought.
END_MARGIN_SECONDS = 0.5
# A cut is sent only when it is at most this fraction of the file.
MUCH_SMALLER = 0.5
# A cut's timestamps must map onto the source's within this (s): far below the server's time
# tolerance (handler/decoding/seek.py: at least 1e-4 s), so that every window samples the same frames.
EXACT_SECONDS = 2e-5
# Codecs cut, those whose cuts tests/test_send_window.py proves to decode as the file: their
# keyframes decode alone, as from the stream start. MPEG-4 Part 2 keeps its VOL header in the first
# keyframe only (a cut from a later one would not decode like the file); others (HEVC, AV1, MPEG-2)
# are sent whole until a test covers them.
CUTTABLE_CODECS = frozenset({"h264", "vp8", "vp9", "libvpx", "libvpx-vp9"})

Span = Tuple[float, float]


@dataclass(frozen=True)
class Cut:
    """What to send instead of the file: ``data`` (``container``), the request ``fields`` with the
    source's clock added, and what it holds (``segments``, seconds of the source)."""

    data: bytes
    fields: Dict[str, str]
    container: str
    segments: List[Span]
    source_bytes: int
    source_container: str

    def describe(self) -> str:
        spans = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in self.segments)
        return (f"sent {len(self.data):,} of {self.source_bytes:,} bytes ({self.container} cut of {spans}, "
                "packets copied without re-encoding; --whole-file sends the file)")


@dataclass(frozen=True)
class WholeFile:
    """The file is sent as it is: ``reason`` says why (for --verbose)."""

    reason: str

    def describe(self) -> str:
        return f"sent the whole file: {self.reason}"


def _number(fields: Mapping[str, str], name: str) -> Optional[float]:
    try:
        return float(fields[name]) if name in fields else None
    except ValueError:
        return None


def needed_spans(duration: float, fields: Mapping[str, str], window: float = MAX_WINDOW_SECONDS) -> List[Span]:
    """Where the windows of a request with ``fields`` may lie in a video of ``duration`` seconds
    (seconds from its first frame), whatever the model's window up to ``window`` seconds; merged,
    in time order. As ``handler.plan.plan_video`` places them: within [start, end], the centre
    window in the middle, clip i of N starting at ``(length - w) * i / N``, a timeline from start."""
    start = _number(fields, "start") or 0.0
    end = _number(fields, "end")
    end = duration if end is None else min(end, duration)
    length = end - start
    clips = int(fields.get("clips", "1")) if fields.get("clips", "1").isdigit() else 1
    if fields.get("timeline", "false") == "true" or length <= window:
        spans = [(start, end)]
    elif clips == 1:
        spans = [(start + (length - window) / 2, start + (length + window) / 2)]
    else:
        spans = [(start + (length - window) * i / clips, min(end, start + length * i / clips + window))
                 for i in range(clips)]
    merged: List[Span] = []
    for a, b in sorted((a, min(duration, b + END_MARGIN_SECONDS)) for a, b in spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@dataclass(frozen=True)
class _Clock:
    """A video's clock as the server reads it: first frame time (absolute s), time base, duration."""

    origin: float
    time_base: float
    duration: float


def _server_clock(data: bytes) -> _Clock:
    """The first-frame time and duration the server's own reader finds (handler/decoding)."""
    from handler.decoding.budget import DecodeLimits  # the server's reader (imports torch): only when cutting
    from handler.decoding.seek import StreamReader

    limits = DecodeLimits(max_frame_pixels=1 << 40, max_decode_seconds=math.inf)
    reader = StreamReader(data, limits, check=lambda: None)
    try:
        return _Clock(reader.origin, float(reader.time_base), reader.info.duration)
    finally:
        reader.close()


def _record(packet: av.Packet, time_base: float) -> PacketRecord:
    t = (packet.pts if packet.pts is not None else packet.dts) * time_base
    return PacketRecord(bytes(packet), packet.pts, packet.dts, packet.duration or 0, packet.is_keyframe, t, 0.0, t)


def _segment(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
             start: float, end: float) -> Optional[List[PacketRecord]]:
    """Packets (decode order) from the last keyframe at or before ``start`` until the first whose
    decode time is at or past ``end`` (absolute s; nothing later can show before ``end``); None when
    the index does not lead to such a keyframe or packets lack timestamps."""
    time_base = float(stream.time_base)
    try:
        container.seek(int(math.floor(start / time_base)), stream=stream, backward=True)
    except av.error.FFmpegError:
        return None
    records: List[PacketRecord] = []
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.pts is None:
            return None
        # Decode times only grow: no later packet shows before ``end``. Containers that store no
        # decode time (Matroska) give presentation times: the B-frames that may follow within a
        # reorder delay show before ``end`` but after the window (END_MARGIN_SECONDS past it).
        if (packet.dts if packet.dts is not None else packet.pts) * time_base >= end:
            break
        if packet.is_keyframe and packet.pts * time_base <= start:
            records = []  # a later keyframe still before the start: a shorter cut
        if records or packet.is_keyframe:
            records.append(_record(packet, time_base))
    if not records or records[0].t > start:
        return None
    return records


def _joined(segments: List[List[PacketRecord]]) -> List[PacketRecord]:
    """Segments (each a run of the stream from a keyframe, in time order) as one packet list: a
    segment starting inside the one before it continues it (a frame's packet is known by its pts)."""
    joined: List[PacketRecord] = []
    seen = set()
    for segment in segments:
        joined.extend(r for r in segment if r.pts not in seen)
        seen.update(r.pts for r in segment)
    return _with_decode_times(joined)


def _with_decode_times(packets: List[PacketRecord]) -> List[PacketRecord]:
    """``packets`` with a decode time each, where the container gave some none (Matroska stores
    presentation times only, and FFmpeg guesses decode times only from the stream start): the
    i-th smallest pts less the reorder delay, so that decode times grow and none is after its pts."""
    if all(r.dts is not None for r in packets):
        return packets
    ordered = sorted(r.pts for r in packets)
    delay = max(0, max(p - r.pts for p, r in zip(ordered, packets)))
    return [replace(r, dts=p - delay) for p, r in zip(ordered, packets)]


def _rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation of the stream's frames (degrees, as the server reads it from decoded
    frames), from decoding its first keyframe through the stream's own context (which carries the
    container's display matrix). The container's decoder is not used after this; cuts seek."""
    keyframe = next((bytes(p) for p in container.demux(stream) if p.size and p.is_keyframe), None)
    if keyframe is None:
        return 0
    context = stream.codec_context
    try:
        frames = [*context.decode(av.Packet(keyframe)), *context.decode(None)]
    except av.error.FFmpegError:
        return 0
    return int(round(frames[0].rotation or 0)) if frames else 0


def cut_for_windows(data: bytes, fields: Mapping[str, str], *, window: float = MAX_WINDOW_SECONDS,
                    max_fraction: float = MUCH_SMALLER) -> Union[Cut, WholeFile]:
    """The cut to send for a request with ``fields`` (header name -> text) on the video ``data``,
    or why the whole file goes instead. ``window``: the longest model window to cover (s);
    ``max_fraction``: the largest cut, as a fraction of the file's bytes, worth sending."""
    try:
        container = av.open(io.BytesIO(data), metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError) as exc:
        return WholeFile(f"the client cannot open it ({exc})")
    with container:
        if not container.streams.video:
            return WholeFile("it has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in CUTTABLE_CODECS:
            return WholeFile(f"its codec ({codec}) is not cut (keyframes that need the stream start, or no test "
                             "proves its cut)")
        # Before the server's reader (which imports torch): windows that span most of the video by
        # the container's own duration are not worth cutting.
        declared = container.duration / av.time_base if container.duration else None
        if declared and sum(b - a for a, b in needed_spans(declared, fields, window)) > max_fraction * declared:
            return WholeFile(f"its windows span most of its {declared:.1f} s: not much smaller")
        # Also before the server's reader: a rotation the cut could not carry.
        rotation = _rotation(container, stream)
        if rotation:
            return WholeFile(f"it is rotated ({rotation} degrees), which the MPEG-TS cut cannot carry")
        try:
            source = _server_clock(data)
        except Exception as exc:  # noqa: BLE001 (the server will say what is wrong with it)
            return WholeFile(f"the server's reader refuses it ({str(exc)[:120]})")
        if (_number(fields, "start") or 0.0) >= source.duration:
            return WholeFile("start is at or past its end (the server says so)")
        spans = needed_spans(source.duration, fields, window)
        segments = []
        for a, b in spans:
            segment = _segment(container, stream, source.origin + a, source.origin + b)
            if segment is None:
                return WholeFile(f"no keyframe index leads to {a:.2f} s (unseekable, or packets without timestamps)")
            segments.append(segment)
        packets = _joined(segments)
        try:
            clip = remux(packets, stream_format(stream), packets[0].t, packets[-1].t)
        except (av.error.FFmpegError, ValueError) as exc:
            return WholeFile(f"its packets cannot be remuxed (damaged data? {str(exc)[:80]})")
        container_name = container.format.name
    if len(clip.data) > max_fraction * len(data):
        return WholeFile(f"the cut of its windows is {len(clip.data):,} of its {len(data):,} bytes: not much smaller")
    offset = _offset(clip.data, packets, source)
    if offset is None:
        return WholeFile(f"its timestamps do not survive the {clip.container} cut exactly")
    sent = {**fields, "source_offset": repr(offset), "source_duration": repr(source.duration)}
    covered: List[Span] = []
    for segment in segments:  # as joined: a segment overlapping the one before continues it
        a, b = segment[0].t - source.origin, segment[-1].t - source.origin
        if covered and a <= covered[-1][1]:
            covered[-1] = (covered[-1][0], max(covered[-1][1], b))
        else:
            covered.append((a, b))
    return Cut(clip.data, sent, clip.container, covered, len(data), container_name)


def _offset(cut: bytes, packets: List[PacketRecord], source: _Clock) -> Optional[float]:
    """The source's second at the cut's first frame (as the server reads the cut), or None when
    the cut's packets do not all keep their source times to ``EXACT_SECONDS``."""
    try:
        clock = _server_clock(cut)
        with av.open(io.BytesIO(cut)) as container:
            stream = container.streams.video[0]
            time_base = float(stream.time_base)
            pts = [p.pts for p in container.demux(stream) if p.size]
    except Exception:  # noqa: BLE001 (a cut the server's reader refuses is not sent)
        return None
    if len(pts) != len(packets) or any(p is None for p in pts):
        return None
    in_cut = [p * time_base - clock.origin for p in pts]
    in_source = [r.pts * source.time_base - source.origin for r in packets]
    offset = in_source[0] - in_cut[0]
    if any(abs(s - c - offset) > EXACT_SECONDS for s, c in zip(in_source, in_cut)):
        return None
    return offset


# The server's reason when a window it planned is not in the cut (handler/plan.py): a deployment
# whose default ``clips`` is not 1, or a model window longer than ``MAX_WINDOW_SECONDS``.
OUTSIDE_REASON = "window_outside_upload"


def for_request(data: bytes, fields: Mapping[str, str], *, whole_file: bool = False) -> Union[Cut, WholeFile]:
    """What ``python -m client`` sends for a video: a cut when the request needs only part of it."""
    if whole_file:
        return WholeFile("--whole-file")
    return cut_for_windows(data, fields)


def send_video(transport: Transport, data: bytes, fields: Mapping[str, str], *,
               whole_file: bool = False) -> Tuple[Outcome, Union[Cut, WholeFile]]:
    """Send the video's cut (or the file, see ``for_request``); when the server planned a window
    outside the cut, send the whole file. The answer names the source's container, as for the file."""
    sent = for_request(data, fields, whole_file=whole_file)
    if isinstance(sent, WholeFile):
        return transport.send(data, fields), sent
    outcome = transport.send(sent.data, sent.fields)
    if not isinstance(outcome, Answer):
        if outcome.reason == OUTSIDE_REASON:
            return transport.send(data, fields), WholeFile(f"the server planned a window outside the cut ({outcome.message[:160]})")
        return outcome, sent
    video = outcome.body.get("video") if isinstance(outcome.body, dict) else None
    if isinstance(video, dict) and "container" in video:
        video["container"] = sent.source_container  # what was sent was our cut; the answer is the file's
    return outcome, sent
