"""A live source from a file, for trying ``client live`` without a camera (and for its tests and
benchmark): ``python -m client.live.sender FILE URL`` plays FILE's video to URL in real time.

URL is anything FFmpeg can publish to: ``udp://127.0.0.1:PORT`` (MPEG-TS), ``rtsp://host:port/name``
(pushed to an RTSP server, which relays it to readers), or a file path. Packets are copied, not
re-encoded; ``make_stream_file`` first makes a file with a fixed frame rate and keyframe interval.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

import av

from client.live.clip import encode_frames

GOP_SECONDS = 1.0


def make_stream_file(source: Path, target: Path, fps: int = 25, seconds: float = 20.0,
                     gop_seconds: float = GOP_SECONDS, short_side: Optional[int] = None) -> Path:
    """``source``'s video (looped to ``seconds``) as H.264 at ``fps`` in MPEG-TS, a keyframe every
    ``gop_seconds``, no B-frames (what a camera sends); frames picked by time (the last one shown
    at each tick). ``short_side``: scale down to it (even sizes)."""
    frames = []
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if short_side and min(frame.width, frame.height) > short_side:
                scale = short_side / min(frame.width, frame.height)
                frame = frame.reformat(width=round(frame.width * scale) // 2 * 2,
                                       height=round(frame.height * scale) // 2 * 2)
            frames.append((frame.time, frame.to_ndarray(format="yuv420p")))
    if not frames:
        raise ValueError(f"{source}: no video frames")
    origin, span = frames[0][0], frames[-1][0] - frames[0][0] + 1.0 / fps
    time_base = Fraction(1, fps)
    with av.open(str(target), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "tune": "zerolatency", "g": str(round(gop_seconds * fps)),
            "keyint_min": str(round(gop_seconds * fps)), "sc_threshold": "0", "bf": "0"})
        height, width = frames[0][1].shape[0] * 2 // 3, frames[0][1].shape[1]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base

        def ticks() -> Iterator[av.VideoFrame]:
            index = 0
            for k in range(round(seconds * fps)):
                t = origin + (k / fps) % span
                while index + 1 < len(frames) and frames[index + 1][0] <= t + 1e-9:
                    index += 1
                if k and t < frames[index][0]:
                    index = 0
                frame = av.VideoFrame.from_ndarray(frames[index][1], format="yuv420p")
                frame.pts, frame.time_base = k, time_base
                yield frame

        encode_frames(out, stream, ticks())
    return target


def output_format(url: str) -> Optional[str]:
    if url.startswith("rtsp://"):
        return "rtsp"
    if url.startswith(("udp://", "tcp://", "srt://")) or url.endswith(".ts"):
        return "mpegts"
    if url.startswith("rtmp://"):
        return "flv"
    return None


def play(path: Path, url: str, start_at: float = 0.0, stop_at: Optional[float] = None, loop: bool = False,
         clock=time.monotonic, sleep=time.sleep) -> int:
    """Copy ``path``'s video packets to ``url``, each when its time comes (decode timestamps against
    the wall clock), from ``start_at`` seconds into the file to ``stop_at``. Returns the packets sent."""
    sent = 0
    fmt = output_format(url)
    options = {"rtsp_transport": "udp"} if fmt == "rtsp" else {}  # rtsp-server-perl records over UDP only
    with av.open(url, "w", format=fmt, options=options) as out:
        with av.open(str(path)) as source:
            stream = source.streams.video[0]
            target = out.add_stream_from_template(stream)
            began = clock()
            loop_offset = 0.0
            while True:
                source.seek(0)
                first = None
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue
                    t = float(packet.dts * stream.time_base)
                    first = t if first is None else first
                    if t - first < start_at:
                        continue
                    if stop_at is not None and t - first >= stop_at:
                        return sent
                    due = t - first - start_at + loop_offset
                    wait = due - (clock() - began)
                    if wait > 0:
                        sleep(wait)
                    packet.stream = target
                    if loop_offset:
                        shift = round(loop_offset / stream.time_base)
                        packet.pts = None if packet.pts is None else packet.pts + shift
                        packet.dts += shift
                    out.mux(packet)
                    sent += 1
                    last = t - first
                if not loop:
                    return sent
                loop_offset += last + 1.0 / float(stream.average_rate or 25)
                start_at = 0.0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.live.sender", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a video file (see --prepare)")
    parser.add_argument("url", help="udp://127.0.0.1:PORT, rtsp://127.0.0.1:PORT/NAME, ...")
    parser.add_argument("--start-at", type=float, default=0.0, help="begin this many seconds into the file")
    parser.add_argument("--stop-at", type=float, default=None, help="stop this many seconds into the file")
    parser.add_argument("--loop", action="store_true", help="play the file again and again")
    parser.add_argument("--prepare", type=Path, default=None, metavar="OUT.ts",
                        help="first make OUT.ts from FILE (25 fps H.264, a keyframe a second) and play that")
    parser.add_argument("--seconds", type=float, default=20.0, help="--prepare: length of OUT.ts")
    args = parser.parse_args(argv)
    path = make_stream_file(args.file, args.prepare, seconds=args.seconds) if args.prepare else args.file
    try:
        play(path, args.url, start_at=args.start_at, stop_at=args.stop_at, loop=args.loop)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
