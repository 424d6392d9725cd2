"""Opening a video: the container, its video stream, and the stream start every decoder learns."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import av

from handler.decoding.budget import DecodeLimits
from handler.decoding.containers import STILL_IMAGE_FORMATS, is_allowed, open_options, probed_format
from handler.body_reader import BodyReader
from handler.errors import RequestError
# Bounds on what opening a file reads before any frame size is checked (FFmpeg's own defaults are
# 5 MB and 5 s; a little more room for files whose video stream starts late in the data).
PROBE_BYTES = 8 * 1024 * 1024
PROBE_MICROSECONDS = 5_000_000
# Priming reads the stream's first packets up to its first keyframe, at most this many (a stream
# without keyframe flags would otherwise be read to its end).
PRIME_MAX_PACKETS = 300


def open_container(data: bytes) -> av.container.InputContainer:
    """The file opened for demuxing (bounded probe, allowed containers only, no protocol).

    415 ``still_image`` / ``unsupported_container`` for a container off the allowlist (named,
    refused before its demuxer reads anything the body names); 422 for what is no video."""
    try:
        container = av.open(
            BodyReader(data),  # io.BytesIO would copy a bytearray body whole
            mode="r",
            metadata_errors="ignore",
            # Bound the probe itself; declared frame sizes are checked before any decoding.
            # Only self-contained containers, and no protocol: nothing but these bytes is read.
            options={"probesize": str(PROBE_BYTES), "analyzeduration": str(PROBE_MICROSECONDS), **open_options()},
        )
    except av.error.FFmpegError as exc:
        _refuse_unsupported_container(data)
        raise RequestError(
            422, "not_a_video", f"the body is not a decodable video ({_ffmpeg_reason(exc)}); "
            f"{len(data)} bytes starting {data[:8].hex(' ')}"
        ) from None
    except (MemoryError, OverflowError, ValueError) as exc:
        raise RequestError(422, "not_a_video", f"the body could not be opened as a video: {exc}") from None
    if not is_allowed(container.format.name):  # FFmpeg checked it; a second look costs nothing
        container.close()
        _refuse_unsupported_container(data, container.format.name)
    return container


def _refuse_unsupported_container(data: bytes, name: Optional[str] = None) -> None:
    """Raise 415 when the body is a container FFmpeg knows but this server does not open."""
    if name is None:
        name, _ = probed_format(data, PROBE_BYTES)
    if name is None or is_allowed(name):
        return  # not a format off the allowlist: the caller's own error says what it is
    if name in STILL_IMAGE_FORMATS:
        raise RequestError(415, "still_image", f"the body is a still image ({name}), not a video; send a video file")
    raise RequestError(
        415, "unsupported_container",
        f"the body is in the {name} format, which this server does not open: it accepts self-contained video "
        "files only (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg, ASF, animated GIF); "
        "playlists, stream descriptions and other files that name other resources are refused",
    )



def video_stream(container: av.container.InputContainer, limits: DecodeLimits) -> av.video.stream.VideoStream:
    """The first video stream that is not cover art, its declared size checked, threads set."""
    video = list(container.streams.video)
    candidates = [s for s in video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not candidates:
        kinds = sorted({s.type for s in container.streams if s not in video}) or ["none"]
        name = container.format.name
        if video:
            raise RequestError(
                422, "no_video_stream",
                f"the file ({name}) has no video to classify: its only video stream is an attached "
                f"picture (cover art), beside {', '.join(kinds)} streams; audio files with cover art "
                "cannot be classified",
            )
        raise RequestError(
            422, "no_video_stream",
            f"the file ({name}) has no video stream (streams: {', '.join(kinds)}); "
            "audio-only files cannot be classified",
        )
    decodable = [s for s in candidates if s.codec_context is not None]
    if not decodable:  # PyAV gives no codec context where FFmpeg has no decoder for the stream
        raise RequestError(
            415, "unsupported_codec",
            f"the file ({container.format.name}) has {len(candidates)} video stream(s) but no decoder for "
            "their codec (unknown, or not built into this server's FFmpeg)",
        )
    stream = decodable[0]
    ctx = stream.codec_context
    check_pixels(ctx.width, ctx.height, "declared", limits)
    # FFmpeg refuses to allocate a frame above this (a size change mid-stream): that packet
    # fails to decode and counts as an error; ``check_pixels`` checks every decoded frame too.
    ctx.options = {"max_pixels": str(limits.max_frame_pixels)}
    stream.thread_type = "AUTO"  # frame threads: ~1.5x faster than FFmpeg's default slice threads
    if limits.threads:
        stream.thread_count = limits.threads
    return stream


def check_pixels(width: int, height: int, what: str, limits: DecodeLimits) -> None:
    """413 ``frame_too_large`` when ``width`` x ``height`` exceeds the limit."""
    if width and height and width * height > limits.max_frame_pixels:
        raise RequestError(
            413, "frame_too_large",
            f"{what} frame size {width}x{height} exceeds the limit of {limits.max_frame_pixels} pixels",
        )


# Demuxers may answer "try again" (EAGAIN) on damaged data; a few retries, then the data ends there.
DEMUX_RETRIES = 8


def packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    """``container.demux(stream)`` from its current position, ending where FFmpeg reports damage it
    cannot demux past (the rest of the data is then unreadable in order anyway; a seek or the
    byte-0 pass may still reach it), instead of failing the request."""
    retries = 0
    while True:
        try:
            for packet in container.demux(stream):
                yield packet
            return
        except av.error.BlockingIOError:
            retries += 1
            if retries > DEMUX_RETRIES:
                return
        except av.error.FFmpegError:
            return


def prime(container: av.container.InputContainer, stream: av.video.stream.VideoStream, check: Callable[[], None]) -> None:
    """Decode the stream's first packets, up to its first keyframe, through the codec context.

    Must run with the demuxer at the first packet (just opened). What the decoder learns there
    and keeps across seeks (the x264 build from its SEI, MPEG-4 encoder user data, the first
    parameter sets) is then known to every later decode, as it is to a decode from the start.
    Errors here are not counted: these frames belong to no window.
    """
    ctx = stream.codec_context
    for count, packet in enumerate(packets(container, stream), start=1):
        check()
        if packet.size == 0:
            continue
        try:
            ctx.decode(packet)
        except av.error.FFmpegError:
            pass
        if packet.is_keyframe or count >= PRIME_MAX_PACKETS:
            break
    try:
        ctx.decode(None)  # drain the frame threads: everything sent has been parsed
    except av.error.FFmpegError:
        pass
    ctx.flush_buffers()


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__
