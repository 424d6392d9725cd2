"""``python -m client people VIDEO [--boxes FILE] [--render out.mp4|sheet.png]``: who is doing what.

Sends one video to an action detector (``slowfast_r50_detection``: README "Who is doing what"),
prints one JSON line per keyframe (its time, window and persons: box, detector score, actions) and,
with ``--render``, draws the boxes and action labels: on the video itself (``.mp4``: each frame
shows the persons of the keyframe whose window holds it) or on a contact sheet of the keyframes'
frames (``.png``/``.jpg``). Frames are read with PyAV at full resolution and turned upright as the
server turns them, so the boxes (in the video's upright pixels) land where the server put them.

With ``--stride`` the answer is streamed (``--no-stream``: one answer): the request goes to the
model's ``_timeline`` registration, which takes long videos, and each keyframe's line is printed as
the server sends it. ``client live --people`` shows and writes the same per live window
(``persons_text``, ``keyframe_lines``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from client.endpoint import ClientError, add_endpoint_options, resolve_endpoint
from client.predict import predict, read_video
from client.timeline import stream_end
from client.transport import Transport

DETECTION_MODEL = "slowfast_r50_detection"
SHEET_COLUMNS = 3
SHEET_WIDTH = 480  # pixels per keyframe on a contact sheet
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client people", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path, help="the video file")
    ask = parser.add_argument_group("what to ask")
    ask.add_argument("--boxes", type=Path, default=None,
                     help='JSON file: {"<seconds>": [[x1, y1, x2, y2], ...]} in the video\'s upright pixels '
                          "(default: the server finds persons)")
    ask.add_argument("--keyframes", default=None, help="seconds to answer, e.g. 1.5,4 (default: the middle)")
    ask.add_argument("--stride", type=float, default=None, help="a keyframe every this many seconds")
    ask.add_argument("--threshold", type=float, default=None, help="actions at or above this probability (server: 0.5)")
    ask.add_argument("--topk", type=int, default=None, help="the k most probable actions per person")
    ask.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                     help="a line per keyframe as the server answers it, from the model's _timeline registration "
                          "(which takes long videos; default: with --stride)")
    parser.add_argument("--render", type=Path, default=None,
                        help="draw boxes and actions: OUT.mp4 (the video) or OUT.png/.jpg (a contact sheet)")
    server = add_endpoint_options(parser)
    server.set_defaults(model=DETECTION_MODEL)
    server.add_argument("--timeout", type=float, default=400.0, help="seconds to wait for the answer (default: 400)")
    return parser


def request_fields(args: argparse.Namespace) -> Dict[str, str]:
    """The detection options as request headers (compact JSON for the boxes)."""
    fields: Dict[str, str] = {}
    if args.boxes is not None:
        try:
            fields["boxes"] = json.dumps(json.loads(args.boxes.read_text()), separators=(",", ":"))
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read boxes from {args.boxes}: {exc}") from None
    for name in ("keyframes", "stride", "threshold", "topk"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    if streams(args):
        fields["stream"] = "true"
    return fields


def streams(args: argparse.Namespace) -> bool:
    """Whether to ask for a streamed answer: ``--stream``, or ``--stride`` unless ``--no-stream``."""
    return args.stream if args.stream is not None else args.stride is not None


def keyframe_text(keyframe: Dict[str, Any]) -> str:
    """One keyframe (time, window, persons) as one compact JSON line."""
    return json.dumps(keyframe, separators=(",", ":"))


def keyframe_lines(answer: Dict[str, Any]) -> Iterator[str]:
    """One compact JSON line per keyframe of the server's answer."""
    for keyframe in answer.get("keyframes", []):
        yield keyframe_text(keyframe)


def follow_keyframes(lines: Iterable[Dict[str, Any]], out: IO[str]) -> Dict[str, Any]:
    """Consume a streamed answer: print each keyframe's line to ``out`` as it arrives (the same
    line ``keyframe_lines`` gives for it); return the final answer.
    Raises:
        ClientError: the server's error line, or a stream that ended without a final answer.
    """
    final: Optional[Dict[str, Any]] = None
    for line in lines:
        keyframe = line.get("keyframe")
        if keyframe is None:
            final = line
            continue
        print(keyframe_text({k: v for k, v in keyframe.items() if k not in ("index", "of")}), file=out, flush=True)
    return stream_end(final, "keyframes")


def persons_text(keyframe: Dict[str, Any], limit: int = 3) -> str:
    """A keyframe's persons on one line: ``2 persons: 0.95 stand, watch | 0.80 sit``."""
    persons = keyframe.get("persons") or []
    if not persons:
        return "no person"
    labels = " | ".join(person_label(person, limit) for person in persons)
    return f"{len(persons)} person{'s' if len(persons) > 1 else ''}: {labels}"


# -- drawing ------------------------------------------------------------------------------------


def person_label(person: Dict[str, Any], limit: int = 3) -> str:
    """``0.97 stand, watch (a person)``: the detector's score (if any) and the top actions."""
    actions = ", ".join(a["label"] for a in person.get("actions", [])[:limit]) or "(no action above threshold)"
    return f"{person['score']:.2f} {actions}" if "score" in person else actions


def draw_persons(image: np.ndarray, persons: Sequence[Dict[str, Any]]) -> np.ndarray:
    """(H, W, 3) uint8 upright frame -> a copy with each person's box and label drawn (Pillow)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    for index, person in enumerate(persons):
        colour = COLOURS[index % len(COLOURS)]
        x1, y1, x2, y2 = person["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=max(2, image.shape[1] // 320))
        text = person_label(person)
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 4 if y1 > (bottom - top) + 4 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 4], fill=colour)
        draw.text((x1 + 2, ty + 1), text, fill=(255, 255, 255))
    return np.asarray(picture)


def upright(frame: Any) -> np.ndarray:
    """A PyAV frame as (H, W, 3) uint8 RGB, turned by its display rotation as the server turns it
    (``torch.rot90`` of k = rotation / 90 quarter turns over (H, W))."""
    image = frame.to_ndarray(format="rgb24")
    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _window_of(time: float, keyframes: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The keyframe whose window holds ``time`` (the nearest keyframe among several)."""
    holding = [k for k in keyframes if k["window"][0] <= time < k["window"][1]]
    return min(holding, key=lambda k: abs(k["time"] - time)) if holding else None


def _frames(video: Path) -> Iterator[Tuple[float, Any, Any]]:
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            yield float(frame.pts * frame.time_base) - start, frame, stream


def render_video(video: Path, answer: Dict[str, Any], out: Path) -> int:
    """Re-encode ``video`` (H.264) with each frame's persons drawn; returns the frames written."""
    import av

    keyframes = answer.get("keyframes", [])
    written = 0
    with av.open(str(out), "w") as output:
        encoder = None
        for time, frame, stream in _frames(video):
            image = upright(frame)
            keyframe = _window_of(time, keyframes)
            if keyframe is not None:
                image = draw_persons(image, keyframe["persons"])
            if encoder is None:
                encoder = output.add_stream("libx264", rate=stream.average_rate or 25)
                encoder.width, encoder.height = image.shape[1] // 2 * 2, image.shape[0] // 2 * 2
                encoder.pix_fmt = "yuv420p"
            picture = av.VideoFrame.from_ndarray(image[: encoder.height, : encoder.width], format="rgb24")
            for packet in encoder.encode(picture):
                output.mux(packet)
            written += 1
        if encoder is not None:
            for packet in encoder.encode():
                output.mux(packet)
    return written


def render_sheet(video: Path, answer: Dict[str, Any], out: Path) -> int:
    """A contact sheet: the frame shown at each keyframe with its persons drawn; returns the keyframes."""
    from PIL import Image

    keyframes = sorted(answer.get("keyframes", []), key=lambda k: k["time"])
    tiles: List[np.ndarray] = []
    pending = list(keyframes)
    shown: Optional[np.ndarray] = None
    for time, frame, _ in _frames(video):
        while pending and time > pending[0]["time"] + 1e-6 and shown is not None:
            tiles.append(draw_persons(shown, pending.pop(0)["persons"]))
        if not pending:
            break
        shown = upright(frame)
    for keyframe in pending:  # keyframes at the very end: the last frame
        if shown is not None:
            tiles.append(draw_persons(shown, keyframe["persons"]))
    if not tiles:
        raise ClientError(f"no frames to draw from {video}")
    scaled = [Image.fromarray(t).resize((SHEET_WIDTH, max(1, round(t.shape[0] * SHEET_WIDTH / t.shape[1]))))
              for t in tiles]
    columns = min(SHEET_COLUMNS, len(scaled))
    height = max(s.height for s in scaled)
    rows = -(-len(scaled) // columns)
    sheet = Image.new("RGB", (columns * SHEET_WIDTH, rows * height), (0, 0, 0))
    for index, tile in enumerate(scaled):
        sheet.paste(tile, ((index % columns) * SHEET_WIDTH, (index // columns) * height))
    sheet.save(out)
    return len(tiles)


def render(video: Path, answer: Dict[str, Any], out: Path) -> str:
    if out.suffix.lower() in (".mp4", ".mkv", ".mov"):
        return f"wrote {out}: {render_video(video, answer, out)} frames with boxes and actions drawn"
    return f"wrote {out}: {render_sheet(video, answer, out)} keyframe(s) on a contact sheet"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        endpoint = resolve_endpoint(args.url, args.model, args.token, args.key_file)
        transport = Transport(endpoint, timeout=args.timeout, attempts=1)
        fields = request_fields(args)
        if streams(args):
            answer = follow_keyframes(transport.stream(read_video(args.video), fields), sys.stdout)
        else:
            answer = predict(transport, args.video, fields)
            for line in keyframe_lines(answer):
                print(line)
        for warning in answer.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        if args.render is not None:
            print(render(args.video, answer, args.render), file=sys.stderr)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
