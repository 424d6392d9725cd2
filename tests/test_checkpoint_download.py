"""The default weights' download, offline: a local HTTP server on 127.0.0.1 serves a good
checkpoint, a 404, a truncated body, a file that is not a checkpoint and a stalled transfer. Each
failure is a clear message, bounded in time, and leaves nothing in torch.hub's cache; the exporter
falls back to seeded random weights only for the default checkpoint, and says so."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import torch

from export import __main__ as export_cli
from export.checkpoint import CheckpointError, DownloadError, download, read_state_dict, weights_origin
from export.variants import VARIANTS

WEIGHTS = {"blocks.0.w": torch.arange(6.0).reshape(2, 3)}


class _Handler(BaseHTTPRequestHandler):
    files: Dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        if name == "truncated.pyth":
            body = self.files["good.pyth"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # then the connection closes
            self.wfile.flush()
            self.close_connection = True
            return
        if name == "stalled.pyth":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            time.sleep(3)  # the behaviour under test: a stall longer than the test's read timeout
            return
        if name not in self.files:
            self.send_error(404, "Not Found")
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[str, Path]]:
    """(base URL of the local server, torch.hub's checkpoint cache, moved into tmp_path)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    good = tmp_path / "good.pyth"
    torch.save({"model_state": WEIGHTS, "epoch": 3}, good)
    _Handler.files = {"good.pyth": good.read_bytes(), "notes.pyth": b"<html>not a checkpoint</html>" * 10}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    # Polled often: shutdown() waits up to one poll interval (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "hub" / "checkpoints"
    finally:
        server.shutdown()
        server.server_close()


def cache_files(cache: Path) -> list:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_good_file_is_downloaded_once_into_the_hub_cache_and_hashed(site):
    base, cache = site
    state = read_state_dict(f"{base}/good.pyth")
    assert list(state) == ["blocks.0.w"] and torch.equal(state["blocks.0.w"], WEIGHTS["blocks.0.w"])
    assert cache_files(cache) == ["good.pyth"]
    digest = hashlib.sha256(_Handler.files["good.pyth"]).hexdigest()[:12]
    _Handler.files = {}  # the second use reads the cache: the server has nothing left
    assert weights_origin(f"{base}/good.pyth", seed=0) == f"checkpoint good.pyth sha256:{digest}"


@pytest.mark.parametrize("name, message", [
    ("missing.pyth", r"could not download checkpoint .*missing\.pyth: HTTP 404"),
    ("truncated.pyth", r"could not download checkpoint .*truncated\.pyth: truncated body"),
    ("notes.pyth", r"could not read checkpoint .*notes\.pyth as a PyTorch checkpoint"),
])
def test_each_failure_is_named_and_leaves_nothing_in_the_cache(site, name, message):
    base, cache = site
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(f"{base}/{name}")
    assert cache_files(cache) == [], "a failed download left a file in the cache"


def test_a_stalled_transfer_times_out(site, tmp_path):
    base, cache = site
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download(f"{base}/stalled.pyth", cache / "stalled.pyth", connect_timeout=2, read_timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert cache_files(cache) == []


def test_an_unreachable_host_fails_at_once(tmp_path):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused immediately.
    started = time.monotonic()
    with pytest.raises(DownloadError, match="could not download checkpoint"):
        download("http://127.0.0.1:9/x.pyth", tmp_path / "x.pyth", connect_timeout=2, read_timeout=2)
    assert time.monotonic() - started < 2.5 and not (tmp_path / "x.pyth").exists()


def test_default_weights_fall_back_to_random_and_say_why(site, monkeypatch, caplog):
    base, _ = site
    variant = VARIANTS["slowfast_r50"]
    monkeypatch.setitem(export_cli.VARIANTS, variant.name,
                        type(variant)(**{**variant.__dict__, "checkpoint_url": f"{base}/SLOWFAST_8x8_R50.pyth"}))
    with caplog.at_level("WARNING", logger="export"):
        chosen, state, weights = export_cli.load_weights("default", None, "slowfast_r50", seed=0)
    assert chosen.name == "slowfast_r50" and state is None
    assert weights == "random weights, seed 0 (predictions are meaningless; SLOWFAST_8x8_R50.pyth: could not download: HTTP 404 Not Found)"
    assert "SEEDED RANDOM WEIGHTS" in caplog.text and "SLOWFAST_8x8_R50.pyth" in caplog.text


def test_default_weights_are_the_model_zoo_checkpoint_when_it_is_reachable(site, monkeypatch):
    base, _ = site
    variant = VARIANTS["slowfast_r50"]
    monkeypatch.setitem(export_cli.VARIANTS, variant.name,
                        type(variant)(**{**variant.__dict__, "checkpoint_url": f"{base}/good.pyth"}))
    _, state, weights = export_cli.load_weights("default", None, "slowfast_r50", seed=0)
    assert state is not None and weights.startswith("checkpoint good.pyth sha256:")


def test_an_explicit_checkpoint_that_cannot_be_fetched_is_an_error_not_a_fallback(site):
    base, _ = site
    with pytest.raises(CheckpointError, match="HTTP 404"):
        export_cli.load_weights(f"{base}/missing.pyth", None, "slowfast_r50", seed=0)


def test_the_model_zoo_urls_are_pytorchvideos_own():
    from pytorchvideo.models.hub.slowfast import checkpoint_paths

    for name, variant in VARIANTS.items():
        assert variant.checkpoint_url == checkpoint_paths[name]
