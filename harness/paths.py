"""Where things are in a checkout: the repo, its built artifacts and the shared video corpus.

The repo root is the one the client reads its config.properties from (``client.config.REPO``).
"""

from __future__ import annotations

from client.config import REPO
from client.endpoint import TIMELINE_SUFFIX, default_model

# config.properties' first model, as `make start` serves it (`make mar` names the files after it).
MODEL = default_model()
TIMELINE_MODEL = f"{MODEL}{TIMELINE_SUFFIX}"
PT = REPO / "build" / f"{MODEL}.pt"
MAR = REPO / "model_store" / f"{MODEL}.mar"
MODEL_CONFIG = REPO / "model-config.yaml"
SHARED = REPO.parent / "shared"
SHARED_VIDEOS = SHARED / "videos"

__all__ = ["REPO", "MODEL", "TIMELINE_MODEL", "PT", "MAR", "MODEL_CONFIG", "SHARED", "SHARED_VIDEOS"]
