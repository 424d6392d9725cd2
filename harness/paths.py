"""Where things are in a checkout: the repo, its built artifacts and the shared clip corpus.

The repo root is the one the client reads its config.properties from (``client.config.REPO``).
"""

from __future__ import annotations

from client.config import REPO

PT = REPO / "build" / "slowfast_r50.pt"
MAR = REPO / "model_store" / "slowfast_r50.mar"
MODEL_CONFIG = REPO / "model-config.yaml"
SHARED = REPO.parent / "shared"
SHARED_VIDEOS = SHARED / "videos"

__all__ = ["REPO", "PT", "MAR", "MODEL_CONFIG", "SHARED", "SHARED_VIDEOS"]
