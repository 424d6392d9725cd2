"""Which files to send: paths given (files or folders, recursively), ``--glob`` patterns and
``--from-list`` files, in a stable order without duplicates.

In a folder a file counts as a video when its extension is a known video one or its first bytes
are a video container's signature (a clip saved without its extension). A file named explicitly
(argument or list line) is always sent: the server says what is wrong with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .qt .3gp .3g2 .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .vob .flv .wmv .asf .ogv .gif .mxf".split()
)


def sniff_video(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes, 16 or more) starts like a video container."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free")  # ISO BMFF: mp4, mov, 3gp
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM (EBML)
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG program stream
        or head.startswith(b"FLV")
        or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # ASF / WMV
        or head.startswith(b"OggS")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS packets
    )


def looks_like_video(path: Path) -> bool:
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            return sniff_video(handle.read(192))
    except OSError:
        return False


def _walk(folder: Path, globs: Sequence[str]) -> Iterator[Path]:
    if globs:
        found = {p for pattern in globs for p in folder.rglob(pattern) if p.is_file()}
        yield from sorted(found)
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .cache: never videos
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and looks_like_video(path):
                yield path


def read_list(list_file: str) -> List[str]:
    """Paths from a list file (``-``: standard input), one a line; blank lines and ``#`` comments skipped."""
    text = sys.stdin.read() if list_file == "-" else Path(list_file).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def discover(paths: Iterable[str], globs: Sequence[str] = (), list_file: Optional[str] = None) -> List[Path]:
    """Every input, in the order given (folders sorted), each once.

    A folder is searched recursively for videos (or, with ``globs``, for files matching any of them);
    any other path is taken as a file, whether or not it exists (a missing one fails when sent).
    """
    given = list(paths) + (read_list(list_file) if list_file else [])
    seen, found = set(), []
    for raw in given:
        path = Path(raw)
        for candidate in (_walk(path, globs) if path.is_dir() else [path]):
            key = os.path.abspath(candidate)
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found
