"""Which containers an upload may be: self-contained ones only, and the name of any other.

FFmpeg follows what a file names: a concat playlist opens the files it lists (relative to the
worker's working directory), an SDP description opens RTP/UDP sockets, HLS/DASH manifests fetch
segments, `tee`/`subfile` name other resources. An upload must only ever be read from the bytes
the client sent, so it is opened with two FFmpeg options that bound that:

- ``format_whitelist``: the demuxers below, all of which read only their own input. FFmpeg checks
  it right after probing the body and before the demuxer reads its header, which is where a
  playlist or a description would open what it names.
- ``protocol_whitelist``: none. The upload is read through our in-memory reader (no protocol);
  any nested open (``file``, ``udp``, ``http``...) is refused even by an allowed demuxer.

The MOV/MP4 demuxer's external data references (``dref``) stay off (its ``enable_drefs``
defaults to 0 and nothing here turns it on).
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Dict, Optional, Tuple

import av

# FFmpeg demuxer names (a demuxer may carry several, e.g. "mov,mp4,m4a,3gp,3g2,mj2").
VIDEO_CONTAINERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2",  # MP4/MOV family (phones, cameras, the web)
    "matroska", "webm",  # MKV, WebM
    "avi",
    "mpegts",  # MPEG-TS (broadcast, camera recorders, the live client's clips)
    "mpeg",  # MPEG-PS (DVD, VOB)
    "flv",
    "ogg",  # Ogg/Theora
    "asf",  # WMV
    "gif",  # animated GIF
)
# Audio-only files are self-contained too: allowed so that they get the clearer 422
# ``no_video_stream`` rather than a refusal of their container.
AUDIO_CONTAINERS = ("mp3", "wav", "aac", "flac")
ALLOWED_DEMUXERS = VIDEO_CONTAINERS + AUDIO_CONTAINERS
# Still images are refused by name as ``still_image`` (415) before any demuxer reads them.
STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "apng")

# FFmpeg's own option values: a comma list of demuxers, and a protocol list that names none.
FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
NO_PROTOCOL = "none"


def open_options() -> Dict[str, str]:
    """The av.open() options that confine FFmpeg to the body's own bytes."""
    return {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": NO_PROTOCOL}


def is_allowed(format_name: str) -> bool:
    """True when any of a demuxer's names (``"mov,mp4,..."``) is on the allowlist."""
    return any(name in ALLOWED_DEMUXERS for name in format_name.split(","))


# -- naming a refused format -------------------------------------------------------------------
# FFmpeg refuses a demuxer off the whitelist with a bare EINVAL that names no format. The name
# comes from FFmpeg's own probe (av_probe_input_format3 in the libavformat PyAV loaded), run over
# the body's first bytes exactly as avformat_open_input probes them: it only reads the buffer.

# avformat_open_input's probe: 2 KiB, doubled until a score above AVPROBE_SCORE_RETRY (25).
_PROBE_FIRST_BYTES = 2048
_PROBE_SCORE_RETRY = 25
_PROBE_PADDING = 64  # AVPROBE_PADDING_SIZE (32) zero bytes, and more


class _ProbeData(ctypes.Structure):
    # AVProbeData: stable since FFmpeg 2.x.
    _fields_ = [
        ("filename", ctypes.c_char_p),
        ("buf", ctypes.c_void_p),
        ("buf_size", ctypes.c_int),
        ("mime_type", ctypes.c_char_p),
    ]


def _load_probe() -> Optional[ctypes._CFuncPtr]:
    libs = os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs")
    candidates = sorted(glob.glob(os.path.join(libs, "libavformat*.so*"))) or ["libavformat.so"]
    for path in candidates:
        try:
            function = ctypes.CDLL(path).av_probe_input_format3
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_void_p
        function.argtypes = [ctypes.POINTER(_ProbeData), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        return function
    return None


_PROBE = _load_probe()


def probed_format(data: bytes, max_bytes: int) -> Tuple[Optional[str], int]:
    """FFmpeg's name for the container ``data`` holds and its probe score (0-100), reading at
    most ``max_bytes`` of it; ``(None, 0)`` when FFmpeg recognises nothing (or cannot be asked)."""
    if _PROBE is None:
        return None, 0
    size, name, score = min(_PROBE_FIRST_BYTES, len(data)), None, 0
    while True:
        chunk = bytes(memoryview(data)[:size])
        buffer = ctypes.create_string_buffer(chunk + b"\0" * _PROBE_PADDING, len(chunk) + _PROBE_PADDING)
        probe_data = _ProbeData(b"", ctypes.cast(buffer, ctypes.c_void_p), len(chunk), None)
        score_out = ctypes.c_int(0)
        found = _PROBE(ctypes.byref(probe_data), 1, ctypes.byref(score_out))
        if found:
            # AVInputFormat's first member is ``const char *name``.
            name, score = ctypes.cast(found, ctypes.POINTER(ctypes.c_char_p))[0].decode("ascii", "replace"), score_out.value
        if score > _PROBE_SCORE_RETRY or size >= min(len(data), max_bytes):
            return name, score
        size = min(size * 2, len(data), max_bytes)
