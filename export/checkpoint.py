"""Read SlowFast weights from a model-zoo checkpoint or a bare state dict, on disk or at a URL,
and describe where they came from (recorded in the model file's contract)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional
from urllib.parse import unquote, urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe to unpickle, or does not fit the network."""


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def checkpoint_name(source: str) -> str:
    """The file name of a path or URL (``.../SLOWFAST_8x8_R50.pyth?x=1`` -> ``SLOWFAST_8x8_R50.pyth``)."""
    return os.path.basename(unquote(urlparse(source).path)) if _is_url(source) else Path(source).name


def fetch(source: str) -> Path:
    """The local file behind ``source``: the path itself, or a URL downloaded (with a progress bar)
    into torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where a second export finds it."""
    if not _is_url(source):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        return path
    name = checkpoint_name(source)
    if not name:
        raise CheckpointError(f"checkpoint URL {source} names no file")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:  # downloads to a temporary file and renames it: no half file is ever cached
            torch.hub.download_url_to_file(source, str(cached), progress=True)
        except Exception as exc:  # network errors come in many types; say what failed and where
            raise CheckpointError(f"could not download checkpoint {source}: {exc}") from exc
    return cached


def read_state_dict(source: str) -> Dict[str, torch.Tensor]:
    """Load a state dict from a path or http(s) URL.

    Accepts pytorchvideo model-zoo files (``{"model_state": state_dict}``), files saved as
    ``{"state_dict": ...}`` and bare state dicts. Files and URLs alike are unpickled with
    ``weights_only=True``: a checkpoint that would run code when loaded is refused, not run.
    """
    path = fetch(source)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"could not read checkpoint {source} (only tensors and plain containers "
                              f"are loaded, never code): {exc}") from exc
    if isinstance(loaded, Mapping):
        for key in ("model_state", "state_dict"):
            if key in loaded and isinstance(loaded[key], Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{source} holds no state dict (expected tensors, or a 'model_state' entry)")
    return dict(loaded)


def weights_origin(checkpoint: Optional[str], seed: int) -> str:
    """Where the weights come from, as stored in the contract and reported in every answer:
    ``"checkpoint SLOWFAST_8x8_R50.pyth sha256:1a2b3c4d5e6f"`` (the file's SHA-256, 12 hex digits)
    or ``"random weights, seed 0 (predictions are meaningless)"``."""
    if not checkpoint:
        return f"random weights, seed {seed} (predictions are meaningless)"
    digest = hashlib.sha256()
    with fetch(checkpoint).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"checkpoint {checkpoint_name(checkpoint)} sha256:{digest.hexdigest()[:12]}"


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
