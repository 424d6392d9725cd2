"""The client's bulk runs, retries, results file, resume, embeddings and timelines, against a
scripted stand-in server (tests/fake_torchserve.py): no TorchServe, a few seconds in all."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import List

import numpy as np
import pytest

from client import cli
from client.bulk import FALLBACK_CONCURRENCY, server_concurrency
from client.endpoint import Endpoint
from client.inputs import discover
from client.progress import Progress, Tally, percentile
from client.results import ResultsWriter, read_lines
from client.transport import Answer, Failure, Transport, backoff_delay
from tests.fake_torchserve import FakeTorchServe, Reply, Request, error, ok

MP4_HEAD = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16  # an ISO BMFF signature: sniffed as video


def endpoint(url: str) -> Endpoint:
    return Endpoint(url=f"{url}/predictions/m", token="k", management_url=url, management_token="mk", model="m")


def embedding_for(body: bytes) -> List[float]:
    """A stand-in embedding that identifies the video it came from."""
    return [float(len(body)), float(body[-1]), 0.5]


def by_content(request: Request) -> Reply:
    """Answers decided by the video's first bytes: how the fake tells clips apart."""
    if request.body.startswith(b"bad"):
        return error(422, "no_video_stream", "the file has no video stream (audio only?)")
    answer = ok()
    if request.headers.get("output") in ("embedding", "both"):
        answer.body["embedding"] = {"model": "m", "dim": 3, "normalized": False, "values": embedding_for(request.body)}
    return answer


def make_folder(root: Path, good: int, bad: int = 0) -> List[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(good):
        paths.append(root / f"clip{i:02d}.mp4")
        paths[-1].write_bytes(MP4_HEAD + bytes([i]) * (i + 1))
    for i in range(bad):
        paths.append(root / f"sound{i}.mp4")
        paths[-1].write_bytes(b"bad" + bytes([i]))
    return paths


def run(capsys, *argv: str) -> tuple:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- transport -----------------------------------------------------------------------------------


def test_retries_worker_deaths_and_503_with_growing_backoff_but_never_4xx() -> None:
    script = [error(507, "InternalServerException", "Worker died.", torchserve=True),
              error(500, "InternalServerException", "Worker scaled down.", torchserve=True),
              error(503, "ServiceUnavailableException", "Model has no worker", torchserve=True), ok(),
              error(500, "InternalServerException", "something else broke", torchserve=True),
              error(413, "over_budget", "too many views"), error(400, "InvalidKeyException", "bad key", torchserve=True)]
    slept: List[float] = []
    with FakeTorchServe(lambda r: script.pop(0)) as fake:
        transport = Transport(endpoint(fake.url), attempts=4, backoff=0.2, sleep=slept.append)
        answer = transport.send(b"v", {"topk": "3"})
        assert isinstance(answer, Answer) and answer.attempts == 4
        assert 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.4 and 0.4 <= slept[2] <= 0.8
        for reason, status in (("InternalServerException", 500), ("over_budget", 413), ("InvalidKeyException", 400)):
            failure = transport.send(b"v", {})
            assert isinstance(failure, Failure) and (failure.reason, failure.status, failure.attempts) == (reason, status, 1)
        assert "token refused" in failure.message  # the 400 InvalidKey hint
        assert len(slept) == 3 and script == []
        assert [r.headers["topk"] for r in fake.requests[:4]] == ["3"] * 4
        assert {r.headers["authorization"] for r in fake.requests} == {"Bearer k"}


def test_only_conditions_that_pass_are_resent_with_the_servers_retry_after() -> None:
    """503 and 429 are resent (no sooner than Retry-After, within max_backoff), as is TorchServe's own
    "Worker died."; a handler's 500 (a bug, with its error id) and any other 5xx never are."""
    bug = Reply(500, {"code": 500, "type": "Internal Server Error", "reason": "internal_error",
                      "message": "the server failed to preprocess (error 1c9e: the server's log has the details)",
                      "error_id": "1c9e"})
    script = [Reply(429, {"code": 429, "reason": "too_many_requests", "message": "slow down"},
                    headers={"Retry-After": "0.7"}),
              Reply(503, {"code": 503, "reason": "out_of_memory", "message": "retry"}, headers={"Retry-After": "99"}),
              error(500, "InternalServerException", "Worker died.", torchserve=True), ok(),
              bug,
              error(507, "InternalServerException", "Insufficient storage", torchserve=True),
              error(500, "InternalServerException", "Worker died. Also something else", torchserve=True)]
    slept: List[float] = []
    with FakeTorchServe(lambda r: script.pop(0)) as fake:
        transport = Transport(endpoint(fake.url), attempts=5, backoff=0.1, max_backoff=5.0, sleep=slept.append)
        answer = transport.send(b"v", {})
        assert isinstance(answer, Answer) and answer.attempts == 4
        assert slept[0] == 0.7  # the server's Retry-After, above the 0.05-0.1 s backoff
        assert slept[1] == 5.0  # Retry-After 99 s, capped at max_backoff
        assert 0.2 <= slept[2] <= 0.4  # jittered exponential backoff: 0.1 x 2^2 x [0.5, 1]
        for status in (500, 507, 500):
            failure = transport.send(b"v", {})
            assert isinstance(failure, Failure) and (failure.status, failure.attempts) == (status, 1)
        assert len(slept) == 3 and script == []
    assert failure.reason == "InternalServerException"
    with FakeTorchServe(lambda r: bug) as fake:
        failure = Transport(endpoint(fake.url), attempts=3, sleep=slept.append).send(b"v", {})
    assert (failure.reason, failure.attempts) == ("internal_error", 1) and "error 1c9e" in failure.message


def test_connection_errors_are_retried_then_recorded() -> None:
    slept: List[float] = []
    transport = Transport(endpoint("http://127.0.0.1:9"), attempts=3, backoff=1.0, max_backoff=1.5, sleep=slept.append)
    failure = transport.send(b"v", {})
    assert isinstance(failure, Failure) and failure.reason == "connection_error" and failure.attempts == 3
    assert len(slept) == 2 and all(0.5 <= s <= 1.5 for s in slept)
    assert backoff_delay(10, 1.0, 30.0, rng=lambda: 1.0) == 30.0  # capped


def test_default_concurrency_is_batch_size_times_workers() -> None:
    with FakeTorchServe(by_content, describe=[{"batchSize": 3, "workers": [{}, {}]}], management_token="mk") as fake:
        notes: List[str] = []
        assert server_concurrency(Transport(endpoint(fake.url)), notes.append) == 6
        assert notes.pop() == "sending 6 at a time (batchSize 3 x 2 worker(s))"
        wrong_key = Transport(Endpoint(f"{fake.url}/predictions/m", "k", fake.url, "wrong", "m"))
        assert server_concurrency(wrong_key, notes.append) == FALLBACK_CONCURRENCY
        assert "--concurrency" in notes[0]


# -- inputs --------------------------------------------------------------------------------------


def test_discovery_folders_sniffing_globs_lists(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "b.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 20)
    (tmp_path / "a" / "deep" / "no_extension").write_bytes(MP4_HEAD)  # a video without its extension
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    (tmp_path / "a" / ".hidden.mp4").write_bytes(MP4_HEAD)
    (tmp_path / "a" / "c.MOV").write_bytes(b"anything")  # known extension, any content
    assert [p.relative_to(tmp_path).as_posix() for p in discover([str(tmp_path / "a")])] == \
        ["a/b.mkv", "a/c.MOV", "a/deep/no_extension"]
    assert [p.name for p in discover([str(tmp_path / "a")], globs=["*.txt", "*.mkv"])] == ["b.mkv", "notes.txt"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# wanted\n{tmp_path / 'a' / 'notes.txt'}\n\n{tmp_path / 'a' / 'b.mkv'}\n")
    found = discover([str(tmp_path / "a" / "b.mkv")], list_file=str(listing))
    assert [p.name for p in found] == ["b.mkv", "notes.txt"]  # named files always go; each once


# -- bulk runs -----------------------------------------------------------------------------------


def test_bulk_writes_one_flushed_line_per_input_and_a_summary(tmp_path: Path, capsys) -> None:
    paths = make_folder(tmp_path / "videos", good=5, bad=2)
    out = tmp_path / "results.jsonl"
    flaky = {"clip03.mp4": [error(507, "InternalServerException", "Worker died.", torchserve=True)]}

    def answer(request: Request) -> Reply:
        name = next(p.name for p in paths if p.read_bytes() == request.body)
        return flaky[name].pop(0) if flaky.get(name) else by_content(request)

    with FakeTorchServe(answer) as fake:
        code, stdout, stderr = run(capsys, str(tmp_path / "videos"), "--out", str(out), "--url", fake.url,
                                   "--token", "k", "--concurrency", "3", "--backoff", "0.01", "--progress-interval", "0")
    lines = read_lines(out)
    assert code == 1 and stdout == ""
    assert sorted(line["path"] for line in lines) == sorted(str(p) for p in paths)
    ok_lines = [line for line in lines if line["status"] == "ok"]
    assert len(ok_lines) == 5 and all(line["answer"]["predictions"][0]["label"] == "texting" for line in ok_lines)
    failed = {Path(line["path"]).name: line["error"] for line in lines if line["status"] == "failed"}
    assert failed == {f"sound{i}.mp4": {"reason": "no_video_stream", "http_status": 422,
                                        "message": "the file has no video stream (audio only?)"} for i in range(2)}
    assert {Path(line["path"]).name: line["attempts"] for line in lines}["clip03.mp4"] == 2
    assert all(line["elapsed_ms"] >= 0 for line in lines) and len(fake.requests) == 8
    # not a terminal: plain progress lines, then the summary
    assert "progress: 7/7 videos (100%), 2 failed" in stderr and "\r" not in stderr
    assert "answered 5, failed 2 of 7 sent" in stderr and "videos/s" in stderr and "p50" in stderr and "p95" in stderr
    assert "failed     2  no_video_stream" in stderr
    assert "Worker died" in stderr and "resending" in stderr


def test_results_go_to_stdout_without_out_and_exit_zero_when_all_answered(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path / "v", good=2)
    with FakeTorchServe(by_content) as fake:
        code, stdout, _ = run(capsys, str(tmp_path / "v"), "--url", fake.url, "--token", "k")
    assert code == 0 and [json.loads(line)["status"] for line in stdout.splitlines()] == ["ok", "ok"]


def test_resume_sends_only_what_is_missing(tmp_path: Path, capsys) -> None:
    paths = make_folder(tmp_path / "v", good=6)
    out = tmp_path / "r.jsonl"
    broken = {paths[4].read_bytes()}  # answered 503 in the first run, until attempts are spent

    def answer(request: Request) -> Reply:
        if request.body in broken:
            return error(503, "ServiceUnavailableException", "queue full", torchserve=True)
        return by_content(request)

    with FakeTorchServe(answer) as fake:
        common = ["--url", fake.url, "--token", "k", "--concurrency", "2", "--retries", "2", "--backoff", "0.01"]
        code, _, _ = run(capsys, *[str(p) for p in paths[:5]], "--out", str(out), *common)
        assert code == 1 and len(fake.requests) == 6  # 4 answered + the broken one twice
        with open(out, "a") as handle:
            handle.write('{"path": "' + str(paths[5]) + '", "status": "ok", "ans')  # a crash mid-line
        fake.requests.clear()
        broken.clear()
        code, _, stderr = run(capsys, str(tmp_path / "v"), "--out", str(out), "--resume", *common)
    assert code == 0 and "(4 skipped: already answered" in stderr
    assert sorted(r.body for r in fake.requests) == sorted(p.read_bytes() for p in paths[4:])
    lines = read_lines(out)
    assert sorted(line["path"] for line in lines[:4]) == sorted(str(p) for p in paths[:4])  # kept, in place
    assert sorted(line["path"] for line in lines) == sorted(str(p) for p in paths)  # each input once, all ok
    assert all(line["status"] == "ok" for line in lines)


def test_an_existing_results_file_needs_resume_or_overwrite(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.jsonl").write_text("")
    make_folder(tmp_path / "v", good=1)
    with pytest.raises(SystemExit) as exited:
        cli.main([str(tmp_path / "v"), "--out", str(tmp_path / "r.jsonl"), "--url", "http://127.0.0.1:9"])
    assert exited.value.code == 2 and "--resume to continue it" in capsys.readouterr().err


def test_embeddings_go_to_npy_rows_in_output_order(tmp_path: Path, capsys) -> None:
    paths = make_folder(tmp_path / "v", good=5, bad=1)
    out = tmp_path / "r.jsonl"
    slow = paths[0].read_bytes()  # answered last: the .npy follows the file's order, not the inputs'

    def answer(request: Request) -> Reply:
        reply = by_content(request)
        reply.delay_s = 0.3 if request.body == slow else 0.0
        return reply

    with FakeTorchServe(answer) as fake:
        code, _, stderr = run(capsys, str(tmp_path / "v"), "--out", str(out), "--embedding", "--url", fake.url,
                              "--token", "k", "--concurrency", "3")
    assert code == 1 and all(r.headers["output"] == "embedding" for r in fake.requests)
    matrix = np.load(tmp_path / "r.npy")
    ok_lines = [line for line in read_lines(out) if line["status"] == "ok"]
    assert matrix.dtype == np.float32 and matrix.shape == (5, 3)
    assert [line["embedding_row"] for line in ok_lines] == list(range(5))
    assert ok_lines[-1]["path"] == str(paths[0])
    for line in ok_lines:
        assert matrix[line["embedding_row"]].tolist() == embedding_for(Path(line["path"]).read_bytes())
    assert "wrote" in stderr and "5 embeddings" in stderr


def test_resumed_embedding_rows_stay_in_file_order(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    emb = lambda v: {"embedding": {"values": [v]}}  # noqa: E731
    out.write_text("\n".join(json.dumps(x) for x in [
        {"path": "a", "status": "ok", "answer": emb(1.0), "embedding_row": 0},
        {"path": "b", "status": "failed", "error": {}},
        {"path": "c", "status": "ok", "answer": emb(3.0), "embedding_row": 7}]) + "\n")
    writer = ResultsWriter(out, resume=True)
    writer.write({"path": "b", "status": "ok", "answer": emb(2.0)})
    writer.close()
    assert [(line["path"], line["embedding_row"]) for line in read_lines(out)] == [("a", 0), ("c", 1), ("b", 2)]


# -- progress ------------------------------------------------------------------------------------


def test_plain_progress_lines_at_most_every_interval() -> None:
    import io

    now = [0.0]
    stream = io.StringIO()
    tally = Tally(total=10, started=0.0)
    progress = Progress(tally, stream=stream, tty=False, interval=5.0, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 1.0 + 1.0  # one clip a second
        tally.record(step != 3, 1000.0 + step, "not_a_video")
        progress.update()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "progress: 5/10 videos (50%), 1 failed, 1.00 videos/s, ETA 5 s"
    assert lines[1] == "progress: 10/10 videos (100%), 1 failed, 1.00 videos/s, ETA 0 s" and len(lines) == 2
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([5.0], 0.95) == 5.0


# -- one video: embedding and timeline -----------------------------------------------------------


TIMELINE = [{"start": round(k * 2.1333, 4), "end": round(k * 2.1333 + 2.1333, 4),
             "predictions": [{"label": a, "index": i, "probability": p} for a, i, p in rows]}
            for k, rows in enumerate([[("juggling balls", 166, 0.61), ("dribbling basketball", 99, 0.2)],
                                      [("juggling balls", 166, 0.42), ("kicking soccer ball", 183, 0.31)],
                                      [("kicking soccer ball", 183, 0.55), ("juggling balls", 166, 0.25)]])]


def timeline_reply(request: Request) -> Reply:
    assert request.headers["timeline"] == "true" and request.headers["stream"] == "true"
    final = {"predictions": [{"label": "juggling balls", "index": 166, "probability": 0.4267}],
             "timeline": TIMELINE, "model": "m", "weights": "random (seeded)", "runtime": "torchscript"}
    return Reply(200, lines=[{"window": {"index": k, "of": 3, **e}} for k, e in enumerate(TIMELINE)] + [final])


def test_timeline_streams_then_prints_table_csv_and_chart(tmp_path: Path, capsys) -> None:
    from PIL import Image

    video = tmp_path / "v.mp4"
    video.write_bytes(MP4_HEAD)
    with FakeTorchServe(timeline_reply) as fake:
        code, stdout, stderr = run(capsys, str(video), "--timeline", "--stride", "2.1333", "--url", fake.url, "--topk", "1",
                                   "--token", "k", "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png"))
    assert code == 0 and fake.requests[0].headers["stride"] == "2.1333"
    assert fake.requests[0].headers["topk"] == "20"  # the chart's lines; the table and CSV keep --topk 1
    assert [line.split()[:2] for line in stderr.splitlines() if line.startswith("window")] == \
        [["window", "1/3"], ["window", "2/3"], ["window", "3/3"]]
    table = stdout.splitlines()
    assert table[2].split() == ["0.00-2.13", "juggling", "balls", "0.6100"]
    assert table[4].split() == ["4.27-6.40", "kicking", "soccer", "ball", "0.5500"]
    with open(tmp_path / "t.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = [(e["start"], e["end"], rank, p["label"], p["index"], p["probability"])
                for e in TIMELINE for rank, p in enumerate(e["predictions"][:1], 1)]
    assert [(float(r["start"]), float(r["end"]), int(r["rank"]), r["label"], int(r["index"]), float(r["probability"]))
            for r in rows] == expected
    with Image.open(tmp_path / "t.png") as image:
        assert image.format == "PNG" and image.size == (1000, 480)
        assert len(image.getcolors(1 << 20) or []) > 20  # drawn, not blank


@pytest.mark.parametrize("note", [
    "slowfast_r50, weights: checkpoint best.ckpt sha256:0123abcd, runtime: openvino-fp32",
    "slowfast_r50, weights: random weights, seed 0 (predictions are meaningless; SLOWFAST_8x8_R50.pyth: could not "
    "download: could not resolve the host (no network?)), runtime: openvino-fp32",  # 1 200 px on one line
    "weights: " + "https://models.example.com/" + "x" * 300 + ".ckpt",  # no space to break at
], ids=["short", "random-weights", "unbreakable"])
def test_the_charts_footer_lies_inside_the_image_below_the_axis_label(note: str) -> None:
    import matplotlib.pyplot as plt

    from client.timeline import timeline_figure

    answer = {"timeline": TIMELINE, "predictions": [{"label": "juggling balls", "index": 166, "probability": 0.43}]}
    fig = timeline_figure(answer, "v.mp4: top classes over time", 5, note)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (footer,) = fig.texts
        box = footer.get_window_extent(renderer)
        label = fig.axes[0].xaxis.label.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0, (box, fig.bbox)
        assert box.y1 < label.y0, (box, label)  # below the axis label, not over it
        assert footer.get_text().replace("\n", "").replace(" ", "") == note.replace(" ", "")  # all of it, wrapped
    finally:
        plt.close(fig)


def test_one_video_embedding_to_npy(tmp_path: Path, capsys) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(MP4_HEAD + b"xyz")
    with FakeTorchServe(by_content) as fake:
        code, stdout, stderr = run(capsys, str(video), "--embedding", "--out", str(tmp_path / "e.npy"),
                                   "--url", fake.url, "--token", "k")
    assert code == 0 and fake.requests[0].headers["output"] == "embedding"
    assert np.load(tmp_path / "e.npy").tolist() == [embedding_for(video.read_bytes())]
    assert "embedding of 3 values" in stdout and "e.npy" in stderr


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(MP4_HEAD)
    for argv, words in ([[str(video), "--plot", "x.png"], "--timeline"],
                        [[str(video), "--out", "x.npy"], "--embedding"],
                        [[str(tmp_path), "--out", "x.npy"], "results.jsonl"],
                        [[str(video), "--embedding", "--output", "labels"], "contradict"],
                        [[], "--from-list"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2 and words in capsys.readouterr().err


def test_interrupt_keeps_finished_lines(tmp_path: Path, capsys, monkeypatch) -> None:
    """Ctrl-C mid-run: exit 130, every line written is whole, and --resume picks up the rest."""
    paths = make_folder(tmp_path / "v", good=4)
    out = tmp_path / "r.jsonl"
    gate = threading.Event()

    def answer(request: Request) -> Reply:
        if request.body != paths[0].read_bytes():
            gate.wait(5)
        return by_content(request)

    def interrupting_update(self, steps: int = 1) -> None:  # Ctrl-C right after the first line
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupting_update)
    before = set(threading.enumerate())
    with FakeTorchServe(answer) as fake:
        code, _, stderr = run(capsys, str(tmp_path / "v"), "--out", str(out), "--url", fake.url, "--token", "k",
                              "--concurrency", "4")
        gate.set()
        # The run returned at once, as on Ctrl-C; its daemon workers end once answered: let them,
        # while the fake still serves (a worker outliving the test would write to a closed stderr).
        for thread in set(threading.enumerate()) - before:
            if thread.name.endswith("(worker)"):
                thread.join(timeout=30)
    assert code == 130 and "--resume" in stderr
    assert [line["path"] for line in read_lines(out)] == [str(paths[0])]
    assert out.read_text().endswith("\n")
