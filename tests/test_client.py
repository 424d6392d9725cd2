"""``python -m client VIDEO``: token lookup, table output, and non-zero exits with the server's message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import client.endpoint as ep
import client.predict as cp
from harness.paths import MODEL, REPO
from harness.torchserve import LocalTorchServe

KEYS = {"management": {"key": "mgmt-key"}, "inference": {"key": "inf-key"}, "API": {"key": "api-key"}}


def run_client(*args: str, env_token: str = "") -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != ep.TOKEN_ENV}
    if env_token:
        env[ep.TOKEN_ENV] = env_token
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


# -- unit ----------------------------------------------------------------------------------------


def test_predictions_url() -> None:
    assert ep.predictions_url("http://127.0.0.1:8080") == f"http://127.0.0.1:8080/predictions/{MODEL}"
    assert ep.predictions_url("127.0.0.1:9000/", "m") == "http://127.0.0.1:9000/predictions/m"
    assert ep.predictions_url("https://h/predictions/x") == "https://h/predictions/x"
    with pytest.raises(ep.ClientError):
        ep.predictions_url("ftp://host/x")


@pytest.mark.parametrize("url,local", [("http://127.0.0.1:8080", True), ("http://localhost:1", True),
                                       ("http://[::1]:8080", True), ("http://10.0.0.5:8080", False),
                                       ("https://serve.example.com", False)])
def test_is_local(url: str, local: bool) -> None:
    assert ep.is_local(url) is local


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key_file.json").write_text(json.dumps(KEYS))
    monkeypatch.setattr(ep, "REPO", tmp_path)
    monkeypatch.delenv(ep.TOKEN_ENV, raising=False)
    local, remote = "http://127.0.0.1:8080/predictions/m", "http://10.1.2.3:8080/predictions/m"
    assert ep.resolve_token(local, None, None) == "inf-key"  # the repo's key file, inference key
    assert ep.resolve_token(remote, None, None) is None  # never sent to another machine
    assert ep.resolve_token(remote, "explicit", None) == "explicit"
    monkeypatch.setenv(ep.TOKEN_ENV, "from-env")
    assert ep.resolve_token(local, None, None) == "from-env"
    assert ep.resolve_token(local, "explicit", None) == "explicit"
    monkeypatch.delenv(ep.TOKEN_ENV)
    with pytest.raises(ep.ClientError, match="cannot read the inference key"):
        ep.resolve_token(local, None, tmp_path / "missing.json")
    (tmp_path / "key_file.json").unlink()
    assert ep.resolve_token(local, None, None) is None


def test_format_table() -> None:
    body = {"predictions": [{"label": "riding mule", "index": 272, "probability": 0.0028032558},
                            {"label": "texting", "index": 355, "probability": 0.0026869}],
            "views": 1, "video": {"duration_s": 1.2, "width": 320, "height": 240, "codec": "h264"},
            "warnings": ["short"]}
    lines = cp.format_table(body, "clip.mp4").splitlines()
    assert lines[0].startswith("clip.mp4") and "1.20 s" in lines[0] and "320x240" in lines[0]
    assert lines[1].split() == ["rank", "label", "index", "probability"]
    assert lines[3].split() == ["1", "riding", "mule", "272", "0.002803"]
    assert lines[-1] == "warning: short"


def test_format_table_says_when_the_weights_are_random() -> None:
    body = {"predictions": [{"label": "texting", "index": 355, "probability": 0.0027}], "views": 1,
            "weights": "random weights, seed 0 (predictions are meaningless)"}
    lines = cp.format_table(body, "clip.mp4").splitlines()
    assert lines[-1] == ("warning: the model has random weights, seed 0 (predictions are meaningless): these labels "
                         "say nothing about the video (trained weights: README, 'Which model')")
    trained = cp.format_table({**body, "weights": "checkpoint SLOWFAST_8x8_R50.pyth sha256:ab12"}, "clip.mp4")
    assert "random" not in trained and "warning" not in trained


@pytest.mark.parametrize("properties", ["load_models=all\n", "inference_address=http://127.0.0.1:9\n", None],
                         ids=["load_models=all", "no load_models", "no config.properties"])
def test_defaults_are_read_when_the_command_runs(properties, tmp_path: Path) -> None:
    """A checkout whose config.properties names no model (``load_models=all``, none, or no file): the
    client imports, answers with ``--model``, and without it says to pass ``--model``."""
    import shutil

    from tests.fake_torchserve import FakeTorchServe, ok

    for package in ("client", "handler"):  # the client beside a config.properties of the test's choosing
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    if properties is not None:
        (tmp_path / "config.properties").write_text(properties)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 16)
    with FakeTorchServe(lambda request: ok()) as fake:
        common = [sys.executable, "-m", "client", str(clip), "--url", fake.url, "--token", "k"]
        named = subprocess.run([*common, "--model", "mine"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        unnamed = subprocess.run(common, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert named.returncode == 0 and "texting" in named.stdout, named.stderr
    assert [r.path for r in fake.requests] == ["/predictions/mine"]
    assert unnamed.returncode == 1 and "names no model in load_models: pass --model NAME" in unnamed.stderr
    assert "Traceback" not in unnamed.stderr


def test_missing_file_and_unreachable_server_exit_nonzero(tmp_path: Path) -> None:
    done = run_client(str(tmp_path / "nope.mp4"), "--url", "http://127.0.0.1:9", "--token", "t")
    assert done.returncode == 1 and "cannot read" in done.stderr
    clip = tmp_path / "x.mp4"
    clip.write_bytes(b"\x00" * 16)
    # Resent as for any connection error (the backoff's own test: test_client_bulk), without the waits.
    done = run_client(str(clip), "--url", "http://127.0.0.1:9", "--token", "t", "--timeout", "5", "--backoff", "0.01")
    assert done.returncode == 1 and f"cannot reach http://127.0.0.1:9/predictions/{MODEL}" in done.stderr


# -- against the session's TorchServe ------------------------------------------------------------


def _args(server: LocalTorchServe) -> List[str]:
    return ["--url", server.inference_url, "--key-file", str(server.workdir / "key_file.json")]


@pytest.mark.integration
def test_prints_the_servers_answer_as_a_table(server: LocalTorchServe, shared_videos: Path) -> None:
    clip = shared_videos / "ii__realshort.mp4"
    answer = server.predict(clip.read_bytes(), {"topk": "3"}).json()
    expected = answer["predictions"]
    done = run_client(str(clip), *_args(server), "--topk", "3")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[3:6]
    random_weights = answer["weights"].startswith("random")  # then the table's last line says so
    assert len(done.stdout.splitlines()) == 6 + random_weights
    assert ("these labels say nothing about the video" in done.stdout) == random_weights
    for row, p in zip(rows, expected):
        assert row.split()[-2:] == [str(p["index"]), f"{p['probability']:.6f}"]
        assert p["label"] in row


@pytest.mark.integration
def test_clips_option_and_json_output(server: LocalTorchServe, shared_videos: Path) -> None:
    done = run_client(str(shared_videos / "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi"), *_args(server),
                      "--clips", "2", "--topk", "2", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert len(body["windows"]) == 2 and body["views"] == 2 and len(body["predictions"]) == 2


@pytest.mark.integration
def test_wrong_token_exits_with_the_servers_message(server: LocalTorchServe, shared_videos: Path) -> None:
    done = run_client(str(shared_videos / "ii__realshort.mp4"), "--url", server.inference_url, "--token", "wrong")
    assert done.returncode == 1
    assert "HTTP 400" in done.stderr and "InvalidKeyException" in done.stderr and "Token Authorization failed" in done.stderr
    assert done.stdout == ""
    # the token from the environment is used too (and refused the same way when wrong)
    done = run_client(str(shared_videos / "ii__realshort.mp4"), "--url", server.inference_url, env_token="also-wrong")
    assert done.returncode == 1 and "InvalidKeyException" in done.stderr


@pytest.mark.integration
def test_bad_video_exits_with_the_handlers_message(server: LocalTorchServe, shared_videos: Path) -> None:
    done = run_client(str(shared_videos / "tc__nasa_13013.mp4.audio.mp3"), *_args(server))
    assert done.returncode == 1
    assert "HTTP 422" in done.stderr and "no_video_stream" in done.stderr and "no video stream" in done.stderr


def test_resends_when_the_worker_died_and_never_after_a_4xx(tmp_path: Path) -> None:
    """A 5xx "Worker died." / "Worker scaled down." and a 503 are resent, at most --retries attempts
    in all; a 4xx is answered at once."""
    from tests.fake_torchserve import FakeTorchServe, error, ok

    answers = [error(507, "InternalServerException", "Worker died.", torchserve=True), ok(),
               error(500, "InternalServerException", "Worker scaled down.", torchserve=True),
               error(503, "inference_failed", "the model failed on this batch; retry"),
               error(422, "no_video_stream", "the file has no video stream")]
    with FakeTorchServe(lambda request: answers.pop(0)) as fake:
        clip = tmp_path / "x.mp4"
        clip.write_bytes(b"\x00" * 16)
        args = ["--url", fake.url, "--token", "k", "--backoff", "0.01"]
        done = run_client(str(clip), *args)
        assert done.returncode == 0, done.stderr
        assert "Worker died" in done.stderr and "resending" in done.stderr and "texting" in done.stdout
        done = run_client(str(clip), *args, "--retries", "2")  # scaled down, then 503: two attempts spent
        assert done.returncode == 1 and "HTTP 503" in done.stderr and "inference_failed" in done.stderr
        assert "Worker scaled down" in done.stderr  # the first attempt's note
        done = run_client(str(clip), *args)  # the handler's 422: not resent
        assert done.returncode == 1 and "HTTP 422" in done.stderr and "no_video_stream" in done.stderr
        assert answers == [] and [r.headers["authorization"] for r in fake.requests] == ["Bearer k"] * 5
