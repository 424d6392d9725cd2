"""A file's SHA-256, read in blocks: one helper for the handler (the OpenVINO cache key) and the
exporter (checkpoint identity and checks). In ``handler/`` because the .mar carries only this
package: a worker cannot import ``export``."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, 64 lower-case hex digits."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
