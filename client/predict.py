"""One video: its top-k labels as a table, its embedding (optionally to a .npy), or its timeline
(streamed, with a table, a CSV and a chart)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from client import timeline
from client.endpoint import ClientError
from client.options import kinds_of, request_fields
from client.results import embedding_of, save_npy
from client.transport import Failure, Transport
from client.window_cut import Cut, for_request, send_video


def read_video(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def predict(transport: Transport, video: Path, fields: Dict[str, str], *, whole_file: bool = False,
            note: Callable[[str], None] = lambda message: None) -> Dict[str, Any]:
    """The server's JSON answer for one video: only the part its windows need is sent
    (client/window_cut.py) unless ``whole_file``; ``note`` hears what was sent.
    Raises:
        ClientError: unreadable file, no answer, or an error answer (with the server's reason).
    """
    outcome, sent = send_video(transport, read_video(video), fields, whole_file=whole_file)
    note(sent.describe())
    if isinstance(outcome, Failure):
        if outcome.status is None:
            raise ClientError(outcome.message)
        raise ClientError(f"server answered HTTP {outcome.status}: {outcome.reason}: {outcome.message}")
    return outcome.body


def format_table(body: Dict[str, Any], video: str = "") -> str:
    predictions: List[Dict[str, Any]] = body["predictions"]
    width = max([len("label")] + [len(str(p.get("label", ""))) for p in predictions])
    lines = []
    info = body.get("video") or {}
    if video or info:
        details = []
        if "duration_s" in info:
            details.append(f"{info['duration_s']:.2f} s")
        if info.get("width") and info.get("height"):
            details.append(f"{info['width']}x{info['height']}")
        if info.get("codec"):
            details.append(str(info["codec"]))
        if "views" in body:
            details.append(f"{body['views']} view(s)")
        timings = body.get("timings_ms") or {}
        if "handler_total" in timings:
            details.append(f"{timings['handler_total'] / 1000:.2f} s in handler")
        lines.append(f"{video}  ({', '.join(details)})" if details else video)
    lines.append(f"{'rank':>4}  {'label':<{width}}  {'index':>5}  {'probability':>11}")
    lines.append(f"{'-' * 4}  {'-' * width}  {'-' * 5}  {'-' * 11}")
    for rank, p in enumerate(predictions, 1):
        lines.append(f"{rank:>4}  {str(p.get('label', '')):<{width}}  {p.get('index', ''):>5}  {p.get('probability', 0):>11.6f}")
    for warning in body.get("warnings") or []:
        lines.append(f"warning: {warning}")
    if has_random_weights(body):
        lines.append(f"warning: the model has {body['weights']}: these labels say nothing about the video "
                     "(trained weights: README, 'Which model')")
    return "\n".join(lines)


def has_random_weights(body: Dict[str, Any]) -> bool:
    """Whether the answer's ``weights`` says the model's weights are random (export/checkpoint.py's
    ``weights_origin``: "random weights, seed N (predictions are meaningless...)")."""
    return str(body.get("weights", "")).lower().startswith("random")


def format_embedding(body: Dict[str, Any], video: str) -> str:
    embedding = body["embedding"]
    values = np.asarray(embedding["values"], dtype=np.float32)
    state = "L2-normalised" if embedding.get("normalized") else "not normalised"
    head = ", ".join(f"{v:.4f}" for v in values[:4])
    return (f"{video}: embedding of {embedding['dim']} values from {embedding.get('model', '?')} ({state}), "
            f"L2 norm {float(np.linalg.norm(values)):.4f}: [{head}, ...]")


def embedding_matrix(body: Dict[str, Any]) -> np.ndarray:
    """(1, dim) for one answer, or (windows, dim) for a timeline's per-window embeddings; float32."""
    windows = timeline.window_embeddings(body) if body.get("timeline") else []
    if windows:
        return np.asarray(windows, dtype=np.float32)
    values = embedding_of(body)
    if values is None:
        raise ClientError("the answer carries no embedding")
    return np.asarray([values], dtype=np.float32)


def run_one(args: argparse.Namespace, transport: Transport) -> int:
    """``python -m client VIDEO [...]``: print the answer for one video; 0 when answered."""
    kinds = kinds_of(args)

    def note(message: str) -> None:
        if args.verbose:
            print(f"note: {message}", file=sys.stderr)

    if args.timeline:
        fields = request_fields(args, stream=True)
        if args.plot is not None:
            fields["topk"] = str(max(args.topk, timeline.PLOT_TOPK))
        # A timeline of a part (start/end) sends that part; of the whole video, the file.
        data = read_video(args.paths[0])
        sent = for_request(data, fields, whole_file=args.whole_file)
        note(sent.describe())
        body, sent_fields = (sent.data, sent.fields) if isinstance(sent, Cut) else (data, fields)
        full = timeline.follow_stream(transport.stream(body, sent_fields))
        answer = timeline.keep_top(full, args.topk)
    else:
        answer = predict(transport, args.paths[0], request_fields(args), whole_file=args.whole_file, note=note)
    name = str(args.paths[0])
    # Output kinds without a terminal format of their own (e.g. logits) print as the JSON answer.
    if args.json or not {"labels", "embedding"} & set(kinds):
        print(json.dumps(answer, indent=2))
    elif args.timeline and "labels" in kinds:
        print(timeline.format_timeline(answer))
    elif "labels" in kinds:
        print(format_table(answer, name))
    if "embedding" in kinds and not args.json and "embedding" in answer:
        print(format_embedding(answer, name))
    if args.out is not None:
        matrix = embedding_matrix(answer)
        save_npy(args.out, matrix)
        print(f"wrote {args.out}: float32 {matrix.shape[0]} x {matrix.shape[1]}", file=sys.stderr)
    if args.csv is not None:
        timeline.write_csv(answer, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.plot is not None:
        weights = answer.get("weights", "?")
        timeline.plot_timeline(full, args.plot, title=f"{Path(name).name}: top classes over time",
                               classes=args.plot_classes,
                               note=f"{answer.get('model', '')}, weights: {weights}, runtime: {answer.get('runtime', '?')}")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
