"""The default weights' download, offline: a local HTTP server on 127.0.0.1 serves a good
checkpoint, a 404, a truncated body, a file that is not a checkpoint, a stalled transfer, gzip
content-encoded bodies and two files of one name at two URLs. Each failure is a clear message,
bounded in time, and leaves nothing in torch.hub's cache; the cache is keyed by the URL; an expected
SHA-256 is checked before the weights are used; the exporter falls back to seeded random weights
only for the default checkpoint when it cannot be fetched, and says so."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import torch

from export import __main__ as export_cli
from export.checkpoint import (
    ChecksumError, CheckpointError, DownloadError, cache_file_name, download, read_state_dict, weights_origin,
)
from export.variants import VARIANTS

WEIGHTS = {"blocks.0.w": torch.arange(6.0).reshape(2, 3)}


class _Handler(BaseHTTPRequestHandler):
    files: Dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        if name.startswith(("gzip/", "gzip-truncated/")):  # Content-Encoding: gzip, Content-Length compressed
            folder, _, served = name.partition("/")
            body = gzip.compress(self.files[served])
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if folder == "gzip" else body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
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
    for run, value in (("run1", 1.0), ("run2", 2.0)):  # two checkpoints of one name at two URLs
        path = tmp_path / f"{run}.ckpt"
        torch.save({"state_dict": {"model.blocks.0.w": torch.full((2, 3), value)}}, path)
        _Handler.files[f"{run}/best.ckpt"] = path.read_bytes()
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
    assert cache_files(cache) == [cache_file_name(f"{base}/good.pyth")]
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


def test_two_urls_of_one_file_name_never_share_a_cache_file(site):
    base, cache = site
    first = read_state_dict(f"{base}/run1/best.ckpt")
    second = read_state_dict(f"{base}/run2/best.ckpt")
    assert float(first["blocks.0.w"][0, 0]) == 1.0 and float(second["blocks.0.w"][0, 0]) == 2.0
    names = cache_files(cache)
    assert len(names) == 2 and all(n.startswith("best.") and n.endswith(".ckpt") for n in names)
    _Handler.files = {}  # both are read from the cache now, each its own
    assert float(read_state_dict(f"{base}/run2/best.ckpt")["blocks.0.w"][0, 0]) == 2.0
    assert float(read_state_dict(f"{base}/run1/best.ckpt")["blocks.0.w"][0, 0]) == 1.0


def _sha256(name: str) -> str:
    return hashlib.sha256(_Handler.files[name]).hexdigest()


@pytest.mark.parametrize("digits", [64, 8])
def test_the_expected_sha256_or_its_prefix_is_accepted(site, digits):
    base, cache = site
    state = read_state_dict(f"{base}/good.pyth", _sha256("good.pyth")[:digits].upper())
    assert torch.equal(state["blocks.0.w"], WEIGHTS["blocks.0.w"]) and len(cache_files(cache)) == 1


def test_a_download_of_another_sha256_is_refused_naming_both_and_not_cached(site):
    base, cache = site
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as caught:
        read_state_dict(f"{base}/good.pyth", wrong)
    assert _sha256("good.pyth") in str(caught.value) and wrong in str(caught.value)
    assert cache_files(cache) == []


def test_a_cached_file_is_checked_too(site):
    base, cache = site
    url = f"{base}/good.pyth"
    read_state_dict(url)
    cached = cache / cache_file_name(url)
    cached.write_bytes(_Handler.files["run1/best.ckpt"])  # the cache changed under us
    with pytest.raises(ChecksumError, match=f"{hashlib.sha256(cached.read_bytes()).hexdigest()}, not the expected "
                                            f"{_sha256('good.pyth')}"):
        read_state_dict(url, _sha256("good.pyth"))


def test_a_local_file_of_another_sha256_is_refused(tmp_path):
    path = tmp_path / "mine.pyth"
    torch.save({"model_state": WEIGHTS}, path)
    with pytest.raises(ChecksumError, match="not the expected 12345678"):
        read_state_dict(str(path), "12345678")


def test_the_hash_prefix_in_the_file_name_is_checked_as_torch_hub_does(site):
    base, cache = site
    prefix = _sha256("good.pyth")[:10]
    _Handler.files[f"good-{prefix}.pyth"] = _Handler.files["good.pyth"]
    _Handler.files["bad-0123456789.pyth"] = _Handler.files["good.pyth"]
    assert read_state_dict(f"{base}/good-{prefix}.pyth", "file-name")
    with pytest.raises(ChecksumError, match="not the expected 0123456789"):
        read_state_dict(f"{base}/bad-0123456789.pyth", "file-name")
    with pytest.raises(CheckpointError, match="carries no hash in its name"):
        read_state_dict(f"{base}/good.pyth", "file-name")
    with pytest.raises(CheckpointError, match="expected the checkpoint's SHA-256"):
        read_state_dict(f"{base}/good.pyth", "not-hex")
    assert cache_files(cache) == [cache_file_name(f"{base}/good-{prefix}.pyth")]


def test_a_gzip_encoded_body_is_decoded_and_its_length_checked_as_sent(site):
    base, cache = site
    state = read_state_dict(f"{base}/gzip/good.pyth", _sha256("good.pyth"))
    assert torch.equal(state["blocks.0.w"], WEIGHTS["blocks.0.w"])
    assert (cache / cache_file_name(f"{base}/gzip/good.pyth")).read_bytes() == _Handler.files["good.pyth"]
    with pytest.raises(DownloadError, match="truncated body"):
        read_state_dict(f"{base}/gzip-truncated/good.pyth")
    assert cache_files(cache) == [cache_file_name(f"{base}/gzip/good.pyth")]


def test_a_body_larger_than_the_limit_is_refused_and_leaves_nothing(site):
    base, cache = site
    size = len(_Handler.files["good.pyth"])
    with pytest.raises(DownloadError, match=f"announces {size:,} bytes, more than"):  # by Content-Length
        download(f"{base}/good.pyth", cache / "a.pyth", max_bytes=size - 1)
    # gzip: Content-Length counts the compressed bytes (under the limit); the decoded ones pass it.
    assert len(gzip.compress(_Handler.files["good.pyth"])) < size
    with pytest.raises(DownloadError, match=f"passed {size - 1:,} bytes"):
        download(f"{base}/gzip/good.pyth", cache / "b.pyth", max_bytes=size - 1)
    assert cache_files(cache) == []
    assert download(f"{base}/good.pyth", cache / "c.pyth", max_bytes=size).read_bytes() == _Handler.files["good.pyth"]


def test_a_default_checkpoint_of_another_sha256_is_an_error_not_a_fallback(site, monkeypatch):
    base, _ = site
    variant = VARIANTS["slowfast_r50"]
    monkeypatch.setitem(export_cli.VARIANTS, variant.name,
                        type(variant)(**{**variant.__dict__, "checkpoint_url": f"{base}/good.pyth"}))
    with pytest.raises(ChecksumError):
        export_cli.load_weights("default", None, "slowfast_r50", seed=0, sha256="f" * 64)
    with pytest.raises(CheckpointError, match="does not apply to random weights"):
        export_cli.load_weights("random", None, "slowfast_r50", seed=0, sha256="f" * 64)
    _, state, _ = export_cli.load_weights("default", None, "slowfast_r50", seed=0, sha256=_sha256("good.pyth"))
    assert state is not None
