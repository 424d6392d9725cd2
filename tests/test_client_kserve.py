"""The clients over KServe's v1 and v2 protocols (``--protocol kserve-v1|kserve-v2``) and with a
cluster's headers (``--header``): the envelope the handler reads, answers read back as the
/predictions answer, bulk runs with embeddings and --resume, live windows, timelines refused,
errors and retries. Against a fake InferenceService (tests/fake_kserve.py, the handler's own
parse and render) and, marked integration, TorchServe's own KServe routes with the real handler.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from client import cli
from client.endpoint import resolve_endpoint
from client.kserve import KSERVE_V1, KSERVE_V2, codec
from client.live import cli as live_cli
from client.live.sender import make_stream_file
from client.results import read_lines
from client.transport import Answer, Failure, Transport
from handler.protocol import parse_row
from tests.fake_kserve import LABELS, PROBABILITIES, WINDOW, FakeKServe, embedding_for
from tests.fake_torchserve import Reply, Request

MP4_HEAD = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16  # sniffed as a video by the client


def run(capsys, *argv: str) -> tuple:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def video_file(tmp_path: Path, name: str = "v.mp4", tail: bytes = b"x") -> Path:
    path = tmp_path / name
    path.write_bytes(MP4_HEAD + tail)
    return path


# -- the codec -----------------------------------------------------------------------------------


def test_routes_from_an_inference_service_url() -> None:
    v1, v2 = codec(KSERVE_V1), codec(KSERVE_V2)
    assert v1.url("http://isvc.example.com/", "slowfast") == "http://isvc.example.com/v1/models/slowfast:predict"
    assert v2.url("http://isvc.example.com", "slowfast") == "http://isvc.example.com/v2/models/slowfast/infer"
    assert v2.url("https://gw/ns/isvc", "m") == "https://gw/ns/isvc/v2/models/m/infer"  # behind a path prefix
    full = "http://h:8080/v1/models/other:predict"
    assert v1.url(full, "slowfast") == full  # a full route is kept
    endpoint = resolve_endpoint("http://isvc.example.com/", "slowfast", protocol=KSERVE_V2,
                                headers=[("X-Api-Key", "abc")])
    assert endpoint.url == "http://isvc.example.com/v2/models/slowfast/infer"
    assert endpoint.timeline_url is None and endpoint.management_url == "" and endpoint.token is None


@pytest.mark.parametrize("protocol", [KSERVE_V1, KSERVE_V2])
def test_the_envelope_is_what_the_handler_reads(protocol: str) -> None:
    video = bytes(range(256)) * 3
    fields = {"topk": "3", "normalize": "true", "output": "both", "start": "1.500000", "crops": "3"}
    body, headers = codec(protocol).encode(video, fields)
    assert headers == {"Content-Type": "application/json"}
    parsed = parse_row({"body": json.loads(body)}, headers)
    assert parsed.protocol == protocol.replace("-", "_") and parsed.videos == [video]
    # JSON values of the option's type, which the handler reads as it reads the header's text.
    assert parsed.options == {"topk": 3, "normalize": True, "output": "both", "start": 1.5, "crops": 3}
    if protocol == KSERVE_V1:  # TorchServe's stock kserve envelope hands the handler one instance alone
        instance = json.loads(body)["instances"][0]
        assert parse_row(instance, {}).videos == [video] and instance["topk"] == 3


def test_a_v2_answer_reads_back_as_the_predictions_answer() -> None:
    v2 = codec(KSERVE_V2)
    answer = {"model_name": "m", "id": "", "outputs": [
        {"name": "labels", "datatype": "BYTES", "shape": [1, 3], "data": ["a", "b", ""]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 0.25, 0.0]},
        {"name": "indices", "datatype": "INT64", "shape": [1, 3], "data": [4, 2, -1]},  # -1: a threshold's padding
        {"name": "embedding", "datatype": "FP32", "shape": [1, 2], "data": [0.6, 0.8]},
        {"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [1.0, -1.0]}]}
    body = v2.decode(answer, {"normalize": "true"})
    assert body["predictions"] == [{"label": "a", "index": 4, "probability": 0.5},
                                   {"label": "b", "index": 2, "probability": 0.25}]
    assert body["embedding"] == {"model": "m", "dim": 2, "normalized": True, "values": [0.6, 0.8]}
    assert body["logits"] == {"values": [1.0, -1.0]} and body["model"] == "m"
    # TorchServe's stock kservev2 envelope: the whole answer as one BYTES element.
    whole = {"predictions": [{"label": "a", "index": 4, "probability": 0.5}], "weights": "w"}
    wrapped = {"outputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": [json.dumps(whole)]}]}
    assert v2.decode(wrapped, {}) == whole
    for bad in ({"outputs": [{"name": "other", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}, {"nope": 1}, []):
        with pytest.raises(ValueError):
            v2.decode(bad, {})
    with pytest.raises(ValueError):
        codec(KSERVE_V1).decode({"predictions": []}, {})


# -- one video, bulk, resume, embeddings ---------------------------------------------------------


@pytest.mark.parametrize("protocol", [KSERVE_V1, KSERVE_V2])
def test_one_video_prints_the_table_torchserve_would(protocol: str, tmp_path: Path, capsys) -> None:
    video = video_file(tmp_path)
    with FakeKServe() as fake:
        code, stdout, stderr = run(capsys, str(video), "--protocol", protocol, "--url", f"{fake.url}/",
                                   "--model", "slowfast", "--topk", "3", "--token", "k")
    assert code == 0, stderr
    (request,) = fake.requests
    route = "/v1/models/slowfast:predict" if protocol == KSERVE_V1 else "/v2/models/slowfast/infer"
    assert request.path == route and request.headers["authorization"] == "Bearer k"
    assert request.headers["content-type"] == "application/json" and "topk" not in request.headers
    rows = [line.split() for line in stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert rows == [[str(rank), *LABELS[i].split(), str(i), f"{PROBABILITIES[i]:.6f}"] for rank, i in ((1, 0), (2, 1), (3, 2))]
    # v1 answers carry the whole answer (its weights among it); a v2 answer only its tensors.
    assert ("random weights" in stdout) == (protocol == KSERVE_V1)


@pytest.mark.parametrize("protocol", [KSERVE_V1, KSERVE_V2])
def test_bulk_with_embeddings_and_resume(protocol: str, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    paths = [video_file(folder, f"clip{i}.mp4", bytes([i]) * (i + 1)) for i in range(3)]
    out = tmp_path / "r.jsonl"
    with FakeKServe() as fake:
        code, _, stderr = run(capsys, str(folder), "--protocol", protocol, "--url", fake.url, "--model", "m",
                              "--embedding", "--normalize", "--out", str(out), "--token", "k")
        assert code == 0, stderr
        assert "sending 4 at a time" in stderr and "no management API" in stderr
        paths.append(video_file(folder, "clip9.mp4", b"\x09" * 10))
        code, _, stderr = run(capsys, str(folder), "--protocol", protocol, "--url", fake.url, "--model", "m",
                              "--embedding", "--normalize", "--out", str(out), "--resume", "--token", "k")
    assert code == 0, stderr
    assert len(fake.requests) == 4 and "(3 skipped: already answered" in stderr  # only the new file was sent
    lines = read_lines(out)
    assert [line["status"] for line in lines] == ["ok"] * 4
    assert all(line["answer"]["embedding"]["normalized"] is True for line in lines)
    matrix = np.load(tmp_path / "r.npy")
    assert matrix.tolist() == [embedding_for(Path(line["path"]).read_bytes()) for line in lines]


def test_timelines_are_refused_plainly_over_kserve(tmp_path: Path, capsys) -> None:
    video = video_file(tmp_path)
    for argv in ([str(video), "--timeline"], [str(tmp_path), "--timeline", "--out", str(tmp_path / "r.jsonl")]):
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--protocol", KSERVE_V2, "--url", "http://127.0.0.1:9", "--model", "m"])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "only over TorchServe's /predictions" in err and "client live FILE" in err


# -- headers, errors, retries --------------------------------------------------------------------


def needs_cluster_auth(request: Request) -> "Reply | None":
    """A gateway in front of the InferenceService: its own token and an API key header."""
    if request.headers.get("authorization") != "Bearer cluster" or request.headers.get("x-api-key") != "abc":
        return Reply(401, {"error": "unauthorized: missing or wrong credentials"})
    return None


def test_headers_reach_the_cluster_and_win_over_the_token(tmp_path: Path, capsys) -> None:
    video = video_file(tmp_path)
    with FakeKServe(before=needs_cluster_auth) as fake:
        args = [str(video), "--protocol", KSERVE_V1, "--url", fake.url, "--model", "m", "--token", "local-key"]
        code, _, stderr = run(capsys, *args)
        assert code == 1 and "HTTP 401" in stderr and "unauthorized: missing or wrong credentials" in stderr
        assert "resending" not in stderr  # a 4xx is never resent
        code, stdout, stderr = run(capsys, *args, "--header", "authorization: Bearer cluster", "--header", "X-Api-Key:abc")
    assert code == 0 and "texting" in stdout, stderr
    assert len(fake.requests) == 2 and fake.requests[1].headers["authorization"] == "Bearer cluster"
    for bad in ("no colon", ": value", "Bad Name: v"):
        with pytest.raises(SystemExit) as exited:
            cli.main([str(video), "--header", bad])
        assert exited.value.code == 2 and "'Name: value'" in capsys.readouterr().err


def test_over_kserve_503_and_429_are_resent_a_500_and_a_4xx_never(tmp_path: Path) -> None:
    script = [Reply(503, {"error": "model is not ready"}), Reply(429, {"error": "too many requests"}), None,
              Reply(500, {"code": 500, "type": "Internal Server Error", "reason": "internal_error",
                          "message": "the server failed to run the model (error 7f3a)", "error_id": "7f3a"}),
              Reply(400, {"error": "bad request"})]
    slept: List[float] = []
    with FakeKServe(before=lambda request: script.pop(0)) as fake:
        endpoint = resolve_endpoint(fake.url, "m", token="k", protocol=KSERVE_V2)
        transport = Transport(endpoint, attempts=4, backoff=0.1, sleep=slept.append)
        answer = transport.send(b"video", {})
        assert isinstance(answer, Answer) and answer.attempts == 3 and answer.body["predictions"][0]["label"] == LABELS[0]
        bug = transport.send(b"video", {})
        assert isinstance(bug, Failure) and (bug.status, bug.reason, bug.attempts) == (500, "internal_error", 1)
        assert "error 7f3a" in bug.message
        wrong = transport.send(b"video", {})
        assert (wrong.status, wrong.message, wrong.attempts) == (400, "bad request", 1)
    assert len(slept) == 2 and script == []


# -- live ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_file(shared_videos: Path, tmp_path_factory) -> Path:
    return make_stream_file(shared_videos / "tv__WUzgd7C1pWA.mp4", tmp_path_factory.mktemp("live") / "s.ts",
                            fps=25, seconds=6.0)


@pytest.mark.parametrize("protocol", [KSERVE_V1, KSERVE_V2])
def test_live_windows_over_kserve(protocol: str, stream_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "live.jsonl"
    window = [] if protocol == KSERVE_V1 else ["--window", f"{WINDOW[1]}"]  # v2 answers carry no window
    with FakeKServe(before=needs_cluster_auth) as fake:
        status, stats = live_cli.run([str(stream_file), "--protocol", protocol, "--url", fake.url, "--model", "m",
                                      "--header", "Authorization: Bearer cluster", "--header", "X-Api-Key: abc",
                                      "--hop", "1.5", "--max-windows", "2", "--out", str(out), *window],
                                     stdout=io.StringIO())
    err = capsys.readouterr().err
    assert status == 0, err
    if protocol == KSERVE_V1:
        assert f"window {WINDOW[1]:g} s (the model's, from the server)" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok"] and lines[0]["predictions"][0]["label"] == LABELS[0]
    windows = fake.requests[-2:]
    for request, line in zip(windows, lines):
        body = json.loads(request.body)
        parameters = body["parameters"]
        assert (parameters["start"], parameters["end"]) == (float(line["clip_options"]["start"]),
                                                          float(line["clip_options"]["end"]))
        data = body["instances"][0]["data"] if protocol == KSERVE_V1 else body["inputs"][0]["data"][0]
        assert len(base64.b64decode(data)) == line["clip_bytes"]


def test_live_over_kserve_v2_asks_for_the_window(stream_file: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        live_cli.main([str(stream_file), "--protocol", KSERVE_V2, "--url", "http://127.0.0.1:9", "--model", "m"])
    assert exited.value.code == 2 and "--window SECONDS" in capsys.readouterr().err


# -- TorchServe's own KServe routes, the real handler ---------------------------------------------


@pytest.mark.integration
def test_torchserves_kserve_routes_answer_as_predictions(server, shared_videos: Path, capsys) -> None:
    """The same clip over /predictions, /v1/models/<name>:predict and /v2/models/<name>/infer of one
    real TorchServe: the same labels and embedding (1e-4: batches may differ between requests)."""
    clip = shared_videos / "ii__realshort.mp4"
    common = ["--url", server.inference_url, "--model", server.model_name, "--token", server.keys.inference,
              "--output", "both", "--topk", "5", "--json"]
    answers = {}
    for protocol in ("torchserve", KSERVE_V1, KSERVE_V2):
        code, stdout, stderr = run(capsys, str(clip), "--protocol", protocol, *common)
        assert code == 0, stderr
        answers[protocol] = json.loads(stdout)
    plain = answers["torchserve"]
    for protocol in (KSERVE_V1, KSERVE_V2):
        got = answers[protocol]
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in plain["predictions"]]
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in plain["predictions"]]
        assert np.allclose([p["probability"] for p in got["predictions"]],
                           [p["probability"] for p in plain["predictions"]], atol=1e-4)
        assert np.allclose(got["embedding"]["values"], plain["embedding"]["values"], atol=1e-4)
    assert answers[KSERVE_V1]["weights"] == plain["weights"]  # v1 carries the whole answer
