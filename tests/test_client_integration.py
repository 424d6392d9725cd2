"""The client against a real TorchServe: a folder of real clips with an audio-only and a corrupt
file, a worker killed mid-run, an interrupted run resumed, a streamed timeline with its chart,
embeddings to .npy, and `make scale` / `make predict`.

One TorchServe for the module (its own: a worker is killed and workers are scaled here), short
clips only. Answers are compared by top-k indices and probabilities (the model may have random weights).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import psutil
import pytest

from harness.paths import REPO
from harness.torchserve import LocalTorchServe

pytestmark = pytest.mark.integration

# Small frames only: decoding stays far inside max_decode_seconds even on a crowded machine.
GOOD = ["ii__realshort.mp4", "dc__video_90.mov", "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi", "mb__trim-buck-bunny.webm"]
AUDIO_ONLY = "tc__nasa_13013.mp4.audio.mp3"


@pytest.fixture(scope="module")
def served(built, tmp_path_factory) -> Iterator[LocalTorchServe]:
    with LocalTorchServe(built["mar"], tmp_path_factory.mktemp("client_ts")) as server:
        yield server


def make_folder(root: Path, shared_videos: Path, good: List[str]) -> Path:
    """Clips, an audio-only file saved as .mp4 and random bytes saved as .mp4."""
    root.mkdir(parents=True)
    for name in good:
        shutil.copy2(shared_videos / name, root / name)
    shutil.copy2(shared_videos / AUDIO_ONLY, root / "zz_audio_only.mp4")
    (root / "zz_corrupt.mp4").write_bytes(os.urandom(50_000))
    return root


@pytest.fixture(scope="module")
def folder(shared_videos: Path, tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("all") / "videos", shared_videos, GOOD)


@pytest.fixture(scope="module")
def reference(served: LocalTorchServe, folder: Path) -> Dict[str, list]:
    """Each good clip's top-5 asked alone."""
    answers = {}
    for name in GOOD:
        reply = served.predict((folder / name).read_bytes())
        assert reply.status_code == 200, reply.text
        answers[name] = reply.json()["predictions"]
    return answers


def client(server: LocalTorchServe, *args: str) -> List[str]:
    return [sys.executable, "-m", "client", *args, "--url", server.inference_url,
            "--management-url", server.management_url, "--key-file", str(server.workdir / "key_file.json")]


def lines_of(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same(got: list, want: list) -> bool:
    return [p["index"] for p in got] == [p["index"] for p in want] and all(
        abs(p["probability"] - q["probability"]) < 1e-4 for p, q in zip(got, want))


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} lines in {path} (client exit {process.poll()})")


def check_results(lines: List[dict], good: List[str], reference: Dict[str, list]) -> None:
    """Every good clip answered exactly once with its own answer; the bad ones failed with their 422."""
    by_name: Dict[str, List[dict]] = {}
    for line in lines:
        by_name.setdefault(Path(line["path"]).name, []).append(line)
    assert sorted(by_name) == sorted(good + ["zz_audio_only.mp4", "zz_corrupt.mp4"])
    assert all(len(found) == 1 for found in by_name.values()), {k: len(v) for k, v in by_name.items()}
    for name in good:
        line = by_name[name][0]
        assert line["status"] == "ok" and same(line["answer"]["predictions"], reference[name]), line
    errors = {name: by_name[name][0]["error"] for name in ("zz_audio_only.mp4", "zz_corrupt.mp4")}
    assert errors["zz_audio_only.mp4"]["http_status"] == 422 and errors["zz_audio_only.mp4"]["reason"] == "no_video_stream"
    assert errors["zz_corrupt.mp4"]["http_status"] == 422 and errors["zz_corrupt.mp4"]["reason"] == "not_a_video"


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, timeout=400)


def make_scale(server: LocalTorchServe, workers: int) -> None:
    done = make("scale", f"WORKERS={workers}", f"MANAGEMENT_URL={server.management_url}",
                f"KEY_FILE={server.workdir / 'key_file.json'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([w for w in server.workers() if w["status"] == "READY"]) == workers, server.workers()


def kill_the_first_busy_worker(server: LocalTorchServe, timeout: float = 120) -> int:
    """SIGKILL the first worker seen computing (CPU time growing): a request is in flight on it."""
    workers = [psutil.Process(int(w["pid"])) for w in server.workers()]
    ours = {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
    assert {w.pid for w in workers} <= ours, "the describe API's worker PIDs are not this TorchServe's"
    before = {w.pid: sum(w.cpu_times()[:2]) for w in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        for worker in workers:
            if sum(worker.cpu_times()[:2]) - before[worker.pid] > 0.5:
                worker.kill()
                return worker.pid
    raise AssertionError("no worker got busy")


def test_bulk_run_on_scaled_workers_survives_a_worker_kill(
        served: LocalTorchServe, folder: Path, reference, tmp_path: Path) -> None:
    """`make scale WORKERS=2`, then a folder with the default concurrency (batchSize x workers) and a
    worker killed mid-run, then `make scale WORKERS=1`."""
    out = tmp_path / "results.jsonl"
    try:
        make_scale(served, 2)
        process = subprocess.Popen(client(served, str(folder), "--out", str(out), "--retries", "4"),
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            killed = kill_the_first_busy_worker(served)
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
        print(f"\n[client] killed worker {killed} mid-run:\n{stderr}")
        assert process.returncode == 1, stderr  # the two bad files failed
        assert "sending 8 at a time (batchSize 4 x 2 worker(s))" in stderr
        lines = lines_of(out)
        check_results(lines, GOOD, reference)
        assert any(line["attempts"] > 1 for line in lines), "the kill hit no request in flight: nothing was tested"
        assert "Worker died" in stderr and "answered 4, failed 2" in stderr
        assert "failed     1  no_video_stream" in stderr and "failed     1  not_a_video" in stderr
        served.wait_ready(workers=2)  # the killed worker is back (scaling down before races its restart)
        make_scale(served, 1)
    finally:
        served.scale(min_worker=1, max_worker=1)


def test_resume_after_an_interrupted_run_sends_only_what_is_missing(
        served: LocalTorchServe, shared_videos: Path, reference, tmp_path: Path) -> None:
    good = GOOD[:3]
    small = make_folder(tmp_path / "videos", shared_videos, good)
    out = tmp_path / "results.jsonl"
    served.wait_ready(workers=1)
    process = subprocess.Popen(client(served, str(small), "--out", str(out), "--concurrency", "1"),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(out, 2, process)
    process.send_signal(signal.SIGKILL)  # a crash: no chance to tidy up
    process.wait(timeout=30)
    first = lines_of(out)
    assert 2 <= len(first) < 5
    done = subprocess.run(client(served, str(small), "--out", str(out), "--resume", "--concurrency", "2"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = lines_of(out)
    answered_before = [line["path"] for line in first if line["status"] == "ok"]
    assert [line["path"] for line in lines[:len(answered_before)]] == answered_before
    sent_again = {Path(line["path"]).name for line in lines[len(answered_before):]}
    assert sent_again == set(good + ["zz_audio_only.mp4", "zz_corrupt.mp4"]) - {Path(p).name for p in answered_before}
    assert f"({len(answered_before)} skipped: already answered" in done.stderr
    check_results(lines, good, reference)
    assert all(line["attempts"] == 1 for line in lines if line["status"] == "failed")  # a 4xx is never resent


def test_streamed_timeline_with_csv_and_chart(served: LocalTorchServe, shared_videos: Path, tmp_path: Path) -> None:
    from PIL import Image

    clip = shared_videos / "tv__WUzgd7C1pWA.mp4"
    done = subprocess.run(client(served, str(clip), "--timeline", "--end", "4.27", "--topk", "3",  # two windows
                                 "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png")),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stderr.splitlines() if line.startswith("window ")] == \
        [["window", "1/2"], ["window", "2/2"]]
    with open(tmp_path / "t.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] * 2
    tops = [r for r in rows if r["rank"] == "1"]
    table = done.stdout.splitlines()[2:4]
    for line, top in zip(table, tops):
        assert line.split()[0] == f"{float(top['start']):.2f}-{float(top['end']):.2f}"
        assert top["label"] in line and line.split()[-1] == f"{float(top['probability']):.4f}"
    assert float(tops[1]["start"]) == pytest.approx(64 / 30, abs=1e-3)
    with Image.open(tmp_path / "t.png") as image:
        assert image.size == (1000, 480)


def test_embeddings_to_npy(served: LocalTorchServe, folder: Path, tmp_path: Path, contract) -> None:
    clips = [str(folder / name) for name in GOOD[:2]]
    out = tmp_path / "emb.jsonl"
    done = subprocess.run(client(served, *clips, "--embedding", "--out", str(out)),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    matrix = np.load(tmp_path / "emb.npy")
    assert matrix.shape == (2, contract.embedding_size) and matrix.dtype == np.float32
    rows = {Path(line["path"]).name: line["embedding_row"] for line in lines_of(out)}
    assert not np.allclose(matrix[0], matrix[1])
    single = subprocess.run(client(served, clips[0], "--embedding", "--out", str(tmp_path / "one.npy")),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    assert np.array_equal(np.load(tmp_path / "one.npy"), matrix[[rows[GOOD[0]]]])


def test_make_predict(served: LocalTorchServe, folder: Path, reference) -> None:
    done = make("predict", f"VIDEO={folder / GOOD[0]}", "TOPK=3", f"URL={served.inference_url}",
                f"KEY_FILE={served.workdir / 'key_file.json'}")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[3:6]
    # The table says so when the served weights are random (the answer's "weights" tells).
    weights = served.predict((folder / GOOD[0]).read_bytes()).json()["weights"]
    random_weights = weights.startswith("random")
    assert len(done.stdout.splitlines()) == 6 + random_weights
    if random_weights:
        assert done.stdout.splitlines()[-1].startswith(f"warning: the model has {weights}: these labels say nothing")
    for row, p in zip(rows, reference[GOOD[0]][:3]):
        assert row.split()[-2:] == [str(p["index"]), f"{p['probability']:.6f}"]
