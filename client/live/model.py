"""What the client needs to know of the served model: its window length (and, to encode, its
short side), asked of the server rather than assumed, so another model's window is honoured.

The window: a probe clip longer than any window, sent once; the server answers with the window it
looked at (``windows: [[a, b]]``), whose length is the model's ``window_seconds`` (to 1e-4 s, the
answer's rounding). An action detector (``--people``) is asked for the keyframe in the probe's
middle, with no person (no forward): it answers that keyframe's window, which gives the window's
length and where in it the keyframe sits. The short side: the preprocessing contract inside the model file, when that
file is at hand (a server on this machine); the answer does not carry it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import av
import numpy as np

from client.endpoint import REPO, ClientError
from client.live.clip import encode_frames
from client.transport import Failure, Transport

PROBE_SECONDS = 16.0  # longer than any window a video model looks at
PROBE_FPS = 4
PROBE_SIZE = (64, 48)
CONTRACT_FILE = "slowfast_contract.json"  # handler/contract.py's name for it inside the .pt


def probe_clip(seconds: float = PROBE_SECONDS, fps: int = PROBE_FPS) -> bytes:
    """A tiny H.264 MPEG-TS of ``seconds`` of flat grey shades at ``fps`` (a few kB)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = PROBE_SIZE[0], PROBE_SIZE[1], "yuv420p"

        def shades() -> Iterator[av.VideoFrame]:
            for k in range(round(seconds * fps)):
                shade = np.full((PROBE_SIZE[1], PROBE_SIZE[0], 3), (40 + 8 * k) % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(shade, format="rgb24")
                frame.pts, frame.time_base = k, Fraction(1, fps)
                yield frame

        encode_frames(out, stream, shades())
    return buffer.getvalue()


def window_from_server(transport: Transport, fields: Dict[str, str]) -> Tuple[float, Dict[str, str]]:
    """The model's window in seconds, from the window the server picks in a long probe clip, and the
    request fields to use (``topk`` lowered to the model's class count if it has fewer).
    Raises:
        ClientError: no answer, or an answer without a window shorter than the probe.
    """
    clip = probe_clip()
    outcome = transport.send(clip, {**fields, "clips": "1"})
    fewer = re.search(r"topk must be in 1\.\.(\d+)", outcome.message) if isinstance(outcome, Failure) else None
    if fewer:  # a model with fewer classes than the labels asked for (averaging asks for 20)
        fields = {**fields, "topk": fewer.group(1)}
        outcome = transport.send(clip, {**fields, "clips": "1"})
    if isinstance(outcome, Failure):
        raise ClientError(f"asking the server for the model's window: {outcome.describe()}")
    windows = outcome.body.get("windows") or []
    if len(windows) != 1 or not isinstance(windows[0], list) or len(windows[0]) != 2:
        raise ClientError(f"the server's answer names no window ({str(outcome.body)[:200]}): give --window SECONDS")
    start, end = (float(v) for v in windows[0])
    if end - start >= PROBE_SECONDS - 0.5:
        raise ClientError(f"the model's window is {PROBE_SECONDS:g} s or longer: give --window SECONDS")
    return round(end - start, 4), fields


def people_window_from_server(transport: Transport, fields: Dict[str, str]) -> Tuple[float, float]:
    """An action detector's window in seconds and its keyframe's offset from the window's start.
    Raises:
        ClientError: no answer, or an answer without one keyframe's window inside the probe.
    """
    middle = PROBE_SECONDS / 2
    outcome = transport.send(probe_clip(), {**fields, "boxes": json.dumps({f"{middle:g}": []})})
    if isinstance(outcome, Failure):
        raise ClientError(f"asking the action detector for its window: {outcome.describe()}")
    keyframes = outcome.body.get("keyframes") or []
    window = keyframes[0].get("window") if len(keyframes) == 1 and isinstance(keyframes[0], dict) else None
    if not (isinstance(window, list) and len(window) == 2 and window[0] <= middle <= window[1]):
        raise ClientError(f"the server's answer names no keyframe window ({str(outcome.body)[:200]}): "
                          "is --model an action detector?")
    if outcome.body.get("person_detector", {}) is None:  # exported where its weights could not be fetched
        raise ClientError("the server's action detector has no person detector (its weights could not be fetched "
                          "at export), and a live window has no boxes to send: export it with one (README, 'Who "
                          "is doing what')")
    start, end = (float(v) for v in window)
    if end - start >= PROBE_SECONDS - 0.5:
        raise ClientError(f"the model's window is {PROBE_SECONDS:g} s or longer")
    return round(end - start, 4), round(middle - start, 4)


def contract_from_model_file(path: Path) -> Optional[Dict]:
    """The preprocessing contract stored in a TorchScript file (a zip; read without torch), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"extra/{CONTRACT_FILE}")), None)
            return json.loads(archive.read(name)) if name else None
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def local_short_side(model: str, model_file: Optional[Path] = None) -> Optional[int]:
    """The short side in ``model_file`` (default: this repo's build/<model>.pt), or None."""
    contract = contract_from_model_file(model_file or REPO / "build" / f"{model}.pt")
    try:
        return int(contract["short_side"]) if contract else None
    except (KeyError, TypeError, ValueError):
        return None
