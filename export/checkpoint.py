"""Read SlowFast weights from a model-zoo checkpoint or a bare state dict, on disk or at a URL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the network."""


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def read_state_dict(source: str) -> Dict[str, torch.Tensor]:
    """Load a state dict from a path or http(s) URL.

    Accepts pytorchvideo model-zoo files (``{"model_state": state_dict}``), files saved as
    ``{"state_dict": ...}`` and bare state dicts. URLs are downloaded with a progress bar into
    torch's hub cache, so a second export does not download again.
    """
    if _is_url(source):
        try:
            loaded = torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True)
        except Exception as exc:  # network errors come in many types; say what failed and where
            raise CheckpointError(f"could not download checkpoint {source}: {exc}") from exc
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"could not read checkpoint {path}: {exc}") from exc
    if isinstance(loaded, Mapping):
        for key in ("model_state", "state_dict"):
            if key in loaded and isinstance(loaded[key], Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{source} holds no state dict (expected tensors, or a 'model_state' entry)")
    return dict(loaded)


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load weights with strict key and shape checks; the error names every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        def show(keys: list) -> str:
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "") or "none"

        raise CheckpointError(
            f"checkpoint {source} does not fit SlowFast R50 "
            f"(missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
            f"shape mismatches: {show(wrong_shape)})"
        )
    model.load_state_dict(state_dict, strict=True)
    log.info("loaded %d tensors from %s", len(state_dict), source)
