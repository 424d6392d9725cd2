"""A seekable file over an uploaded body that does not copy it.

TorchServe hands the handler a raw body as a ``bytearray``. ``io.BytesIO`` shares the buffer of a
``bytes`` object only: any other buffer it copies whole, so opening a 100 MB upload with it held two
copies in the worker for the whole request. PyAV reads through ``read(n)`` in small chunks, so a
view over the body is all it needs.
"""

from __future__ import annotations

import io
import os
from typing import Union

Buffer = Union[bytes, bytearray, memoryview]


class BodyReader(io.RawIOBase):
    """Read-only, seekable, over ``data`` (bytes, bytearray or memoryview), without a copy of it."""

    def __init__(self, data: Buffer) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:count] = self._view[self._pos:self._pos + count]
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._view.release()  # the body may be freed (or resized) again
        super().close()
