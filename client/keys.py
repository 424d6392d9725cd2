"""Read TorchServe's token-authorization keys from the key_file.json it writes where it starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

KEY_FILE = "key_file.json"


class KeyFileError(RuntimeError):
    """No usable key file (TorchServe not started here, or started with token auth off)."""


@dataclass(frozen=True)
class Keys:
    inference: str
    management: str

    def inference_header(self) -> dict:
        return {"Authorization": f"Bearer {self.inference}"}

    def management_header(self) -> dict:
        return {"Authorization": f"Bearer {self.management}"}


def read_keys(directory: Path, file_name: str = KEY_FILE) -> Keys:
    path = Path(directory) / file_name
    try:
        raw = json.loads(path.read_text())
        return Keys(inference=raw["inference"]["key"], management=raw["management"]["key"])
    except FileNotFoundError:
        raise KeyFileError(f"{path} not found: start TorchServe from {directory} (make start)") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"{path} is not a TorchServe key file: {exc!r}") from None


def find_keys(start: Optional[Path] = None) -> Optional[Keys]:
    """Keys from ``start`` (default: this repo's root), or None if there is no key file there."""
    directory = start or Path(__file__).resolve().parent.parent
    try:
        return read_keys(directory)
    except KeyFileError:
        return None
