"""Read SlowFast weights from the checkpoint formats people have, on disk or at a URL, and describe
where they came from (recorded in the model file's contract and so in every answer).

Formats (all unpickled with ``weights_only=True``: a file that would run code is refused):
- pytorchvideo model zoo: ``{"model_state": state_dict}``;
- PySlowFast ``pysf_model_zoo`` files: ``{"model_state": ...}``, keys maybe ``model.``-prefixed;
- PyTorch Lightning ``.ckpt``: ``{"state_dict": {"model.blocks...": ...}, "epoch": ...}``;
- a bare state dict (``torch.save(model.state_dict(), path)``), maybe from DDP (``module.``).
A prefix is stripped only when every key carries it; whatever still does not match the network is
named by ``load_strict``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import unquote, urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)

# Bounded: DNS failure is immediate; an unreachable host gives up after CONNECT, a stalled transfer
# after READ seconds without a byte. A download never hangs the export.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
STATE_KEYS = ("model_state", "state_dict", "model")
PREFIXES = ("model.", "module.")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe to unpickle, or does not fit the network."""


class DownloadError(CheckpointError):
    """A URL could not be fetched (network, HTTP status, truncated body); nothing was cached."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


_is_url = is_url  # the name other modules used before


def checkpoint_name(source: str) -> str:
    """The file name of a path or URL (``.../SLOWFAST_8x8_R50.pyth?x=1`` -> ``SLOWFAST_8x8_R50.pyth``)."""
    return os.path.basename(unquote(urlparse(source).path)) if is_url(source) else Path(source).name


def hub_cache_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where torch.hub itself looks."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, destination: Path, connect_timeout: float = CONNECT_TIMEOUT_S,
             read_timeout: float = READ_TIMEOUT_S) -> Path:
    """Download ``url`` to ``destination`` through a temporary file in the same directory, renamed
    into place only once complete (length checked against Content-Length) and readable as a
    checkpoint: a failure leaves nothing at ``destination`` and no temporary file behind.

    ``torch.hub.download_url_to_file`` has no timeout; this one bounds connect and each read.
    """
    import requests

    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".partial", dir=destination.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as reply:
                    if reply.status_code != 200:
                        raise DownloadError(f"could not download checkpoint {url}: HTTP {reply.status_code} {reply.reason}")
                    expected = reply.headers.get("Content-Length")
                    received = 0
                    for block in reply.iter_content(1 << 20):
                        out.write(block)
                        received += len(block)
            except requests.RequestException as exc:
                raise DownloadError(f"could not download checkpoint {url}: {_reason(exc)}") from exc
        if expected is not None and received != int(expected):
            raise DownloadError(f"could not download checkpoint {url}: truncated body ({received} of {expected} bytes)")
        _load(partial, url)  # not a checkpoint: refused before it reaches the cache
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s to %s (%.1f MB)", url, destination, destination.stat().st_size / 1e6)
    return destination


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, short ("Name or service not known", "timed out")."""
    text = str(exc)
    for marker in ("Failed to resolve", "NameResolutionError", "Name or service not known", "Temporary failure"):
        if marker in text:
            return "could not resolve the host (no network?)"
    if "IncompleteRead" in text or "ChunkedEncodingError" in type(exc).__name__:
        return f"truncated body ({text[:200]})"
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return f"timed out ({type(exc).__name__})"
    if "Connection refused" in text:
        return "connection refused"
    return text[:300]


def fetch(source: str) -> Path:
    """The local file behind ``source``: the path itself, or a URL downloaded once into torch.hub's
    cache (``$TORCH_HOME/hub/checkpoints``), where a second export finds it."""
    if not is_url(source):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        return path
    name = checkpoint_name(source)
    if not name:
        raise CheckpointError(f"checkpoint URL {source} names no file")
    cached = hub_cache_dir() / name
    if not cached.is_file():
        log.info("downloading %s into %s", source, cached.parent)
        download(source, cached)
    return cached


def _load(path: Path, source: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not read checkpoint {source} as a PyTorch checkpoint (only tensors and plain containers "
            f"are loaded, never code): {str(exc).splitlines()[0][:300]}"
        ) from exc


def unwrap_state_dict(loaded: object, source: str) -> Dict[str, torch.Tensor]:
    """The network's state dict inside any of the formats above, prefixes stripped."""
    if isinstance(loaded, Mapping):
        for key in STATE_KEYS:
            if key in loaded and isinstance(loaded[key], Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{source} holds no state dict (expected tensors, or a 'model_state' / 'state_dict' entry of tensors)"
        )
    state = {str(k): v for k, v in loaded.items()}
    for prefix in PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def read_state_dict(source: str) -> Dict[str, torch.Tensor]:
    """Load a state dict from a path or http(s) URL, in any of the formats above."""
    path = fetch(source)
    return unwrap_state_dict(_load(path, source), source)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_origin(checkpoint: Optional[str], seed: int, why_random: str = "") -> str:
    """Where the weights come from, as stored in the contract and reported in every answer:
    ``"checkpoint SLOWFAST_8x8_R50.pyth sha256:1a2b3c4d5e6f"`` (the file's SHA-256, 12 hex digits)
    or ``"random weights, seed 0 (predictions are meaningless)"`` (with ``why_random`` appended)."""
    if not checkpoint:
        reason = f"; {why_random}" if why_random else ""
        return f"random weights, seed {seed} (predictions are meaningless{reason})"
    return f"checkpoint {checkpoint_name(checkpoint)} sha256:{sha256_of(fetch(checkpoint))[:12]}"


def compare_keys(own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> Tuple[list, list, list]:
    """(missing, unexpected, mis-shaped) keys of ``given`` against the network's ``own``."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(given)
        if tuple(own[k].shape) != tuple(given[k].shape)
    )
    return missing, unexpected, wrong_shape


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str = "the network") -> None:
    """Load weights with strict key and shape checks; the error names every mismatch."""
    missing, unexpected, wrong_shape = compare_keys(model.state_dict(), state_dict)
    if missing or unexpected or wrong_shape:
        def show(keys: list) -> str:
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "") or "none"

        raise CheckpointError(
            f"checkpoint {source} does not fit {what} "
            f"(missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
            f"shape mismatches: {show(wrong_shape)})"
        )
    model.load_state_dict(state_dict, strict=True)
    log.info("loaded %d tensors from %s", len(state_dict), source)
