"""Read SlowFast weights from the checkpoint formats people have, on disk or at a URL, and describe
where they came from (recorded in the model file's contract and so in every answer).

Formats (all unpickled with ``weights_only=True``: a file that would run code is refused):
- pytorchvideo model zoo: ``{"model_state": state_dict}``;
- PySlowFast ``pysf_model_zoo`` files: ``{"model_state": ...}``, keys maybe ``model.``-prefixed;
- PyTorch Lightning ``.ckpt``: ``{"state_dict": {"model.blocks...": ...}, "epoch": ...}``;
- a bare state dict (``torch.save(model.state_dict(), path)``), maybe from DDP (``module.``).
A prefix is stripped only when every key carries it; whatever still does not match the network is
named by ``load_strict``.

A URL is downloaded once into torch.hub's cache, under a name keyed by the whole URL (two URLs that
end in the same ``best.ckpt`` never share a file). An expected SHA-256 (``--checkpoint-sha256``,
torch.hub's ``check_hash`` convention) is checked before the weights are used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import unquote, urlparse

import torch
from torch import nn

from handler.file_hash import file_sha256

log = logging.getLogger(__name__)

# Bounded: DNS failure is immediate; an unreachable host gives up after CONNECT, a stalled transfer
# after READ seconds without a byte. A download never hangs the export.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# The largest download accepted, as stored (decoded): SlowFast checkpoints are 130-250 MB, a
# Lightning .ckpt with optimizer state about 3x that. Bounds what a wrong URL (or a gzip body that
# inflates without end) can write into the cache before anything checks it.
MAX_DOWNLOAD_BYTES = 4 << 30
STATE_KEYS = ("model_state", "state_dict", "model")
PREFIXES = ("model.", "module.")
# torch.hub's check_hash convention: a file named NAME-<the first 8 or more hex digits of its
# SHA-256>.EXT; ``--checkpoint-sha256 file-name`` checks the file against that prefix.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
SHA256_FROM_NAME = "file-name"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe to unpickle, or does not fit the network."""


class DownloadError(CheckpointError):
    """A URL could not be fetched (network, HTTP status, truncated body); nothing was cached."""


class ChecksumError(CheckpointError):
    """A checkpoint's SHA-256 is not the one expected: its weights are never used (no fallback)."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


_is_url = is_url  # the name other modules used before


def checkpoint_name(source: str) -> str:
    """The file name of a path or URL (``.../SLOWFAST_8x8_R50.pyth?x=1`` -> ``SLOWFAST_8x8_R50.pyth``)."""
    return os.path.basename(unquote(urlparse(source).path)) if is_url(source) else Path(source).name


def hub_cache_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where torch.hub itself looks."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_file_name(url: str) -> str:
    """``NAME.<12 hex digits of the URL's SHA-256>.EXT``: the URL's file name keyed by the whole
    URL, so different URLs never share a cache file (a signed URL whose query changes is fetched
    again)."""
    name = Path(checkpoint_name(url))
    return f"{name.stem}.{hashlib.sha256(url.encode()).hexdigest()[:12]}{name.suffix}"


def expected_sha256(value: Optional[str], source: str) -> Optional[str]:
    """The SHA-256 (or its first 8 or more hex digits) ``value`` asks ``source`` to have, lower
    case; ``file-name``: the prefix in the file name (``NAME-<hex>.EXT``, torch.hub's check_hash)."""
    if not value:
        return None
    if value.strip() == SHA256_FROM_NAME:
        found = HASH_IN_NAME.search(checkpoint_name(source))
        if not found:
            raise CheckpointError(
                f"--checkpoint-sha256 {SHA256_FROM_NAME}: {checkpoint_name(source)} carries no hash in its name "
                "(torch.hub's convention: NAME-<the first 8 or more hex digits of its SHA-256>.EXT)"
            )
        return found.group(1)
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise CheckpointError(
            f"--checkpoint-sha256 {value!r}: expected the checkpoint's SHA-256 (64 hex digits, or its first 8 or "
            f"more) or {SHA256_FROM_NAME}"
        )
    return text


def verify_sha256(path: Path, expected: Optional[str], source: str) -> None:
    """Raise ``ChecksumError`` naming both hashes unless ``path``'s SHA-256 starts with ``expected``."""
    if expected is None:
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise ChecksumError(
            f"checkpoint {source}: its SHA-256 is {actual}, not the expected {expected} "
            "(CHECKPOINT_SHA256 / --checkpoint-sha256): refused, its weights are not used"
        )
    log.info("checkpoint %s: SHA-256 %s matches the expected %s", source, actual, expected)


def download(url: str, destination: Path, connect_timeout: float = CONNECT_TIMEOUT_S,
             read_timeout: float = READ_TIMEOUT_S, sha256: Optional[str] = None,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download ``url`` to ``destination`` through a temporary file in the same directory, renamed
    into place only once complete (the bytes received checked against Content-Length, which counts
    them as sent: compressed, for a ``Content-Encoding: gzip`` body, which is stored decoded), of
    the expected SHA-256 (``sha256``: a full hash or a prefix) and readable as a checkpoint: a
    failure leaves nothing at ``destination`` and no temporary file behind. A body announced or
    growing past ``max_bytes`` (decoded) is refused as soon as that is known.

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
                    if expected is not None and expected.isdigit() and int(expected) > max_bytes:
                        raise DownloadError(_too_large(url, f"announces {int(expected):,} bytes", max_bytes))
                    written = 0
                    for block in reply.iter_content(1 << 20):  # decoded, if the body is content-encoded
                        written += len(block)
                        if written > max_bytes:
                            raise DownloadError(_too_large(url, f"passed {max_bytes:,} bytes", max_bytes))
                        out.write(block)
                    received = reply.raw.tell()  # bytes as sent, before decoding: what Content-Length counts
            except requests.RequestException as exc:
                raise DownloadError(f"could not download checkpoint {url}: {_reason(exc)}") from exc
        if expected is not None and received != int(expected):
            raise DownloadError(f"could not download checkpoint {url}: truncated body ({received} of {expected} bytes)")
        verify_sha256(partial, sha256, url)  # before it reaches the cache, as the next two
        _load(partial, url)  # not a checkpoint: refused before it reaches the cache
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s to %s (%.1f MB)", url, destination, destination.stat().st_size / 1e6)
    return destination


def _too_large(url: str, what: str, max_bytes: int) -> str:
    return (f"could not download checkpoint {url}: the body {what}, more than the {max_bytes / 2**30:g} GiB "
            "accepted (a checkpoint is a few hundred MB; download it yourself and pass the file if it is right)")


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


def fetch(source: str, sha256: Optional[str] = None) -> Path:
    """The local file behind ``source``: the path itself, or a URL downloaded once into torch.hub's
    cache (``$TORCH_HOME/hub/checkpoints``, as ``cache_file_name``), where a second export finds it.

    ``sha256``: the SHA-256 it must have (``expected_sha256``'s forms), checked before it is used,
    on a local file, a download and a cached file alike."""
    expected = expected_sha256(sha256, source)
    if not is_url(source):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        verify_sha256(path, expected, source)
        return path
    if not checkpoint_name(source):
        raise CheckpointError(f"checkpoint URL {source} names no file")
    cached = hub_cache_dir() / cache_file_name(source)
    if cached.is_file():
        verify_sha256(cached, expected, f"{source} (cached as {cached})")
    else:
        log.info("downloading %s into %s", source, cached)
        download(source, cached, sha256=expected)
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


def read_state_dict(source: str, sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Load a state dict from a path or http(s) URL, in any of the formats above; ``sha256``: the
    SHA-256 it must have (``fetch``)."""
    path = fetch(source, sha256)
    return unwrap_state_dict(_load(path, source), source)


def weights_origin(checkpoint: Optional[str], seed: int, why_random: str = "") -> str:
    """Where the weights come from, as stored in the contract and reported in every answer:
    ``"checkpoint SLOWFAST_8x8_R50.pyth sha256:1a2b3c4d5e6f"`` (the file's SHA-256, 12 hex digits)
    or ``"random weights, seed 0 (predictions are meaningless)"`` (with ``why_random`` appended)."""
    if not checkpoint:
        reason = f"; {why_random}" if why_random else ""
        return f"random weights, seed {seed} (predictions are meaningless{reason})"
    return f"checkpoint {checkpoint_name(checkpoint)} sha256:{file_sha256(fetch(checkpoint))[:12]}"


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
