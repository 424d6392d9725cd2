"""Read this repo's TorchServe config.properties (the server `make start` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.properties"


def read_properties(path: Path) -> Dict[str, str]:
    properties: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def repo_property(name: str, default: str) -> str:
    """One entry of the repo's config.properties, or ``default`` when it is absent or unreadable."""
    try:
        return read_properties(CONFIG).get(name, default)
    except OSError:
        return default
