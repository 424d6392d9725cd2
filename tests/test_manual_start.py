"""The README's manual start, verbatim, from a fresh clone in a clean shell (issue 14).

README: "After `make mar`, plain `torchserve --start` in the repo root (venv active) also serves the
model". This test clones the repo (committed tree), links the built venv and the built .mar into
the clone (so no export runs), and in ``env -i bash`` with only HOME, PATH and a private TMPDIR runs
``source .venv/bin/activate; torchserve --start``; then, as a user would: waits for READY, sends a
short clip with the inference key from key_file.json, scales to 2 workers and back through the
management API, and ``torchserve --stop``.

Also ``make start``, ``make status``, ``make predict`` and ``make stop`` themselves, in this checkout
with the .mar `make mar` built (start must not rebuild it); they write logs/ and key_file.json in the
repo root, as they do for a user.

Both bind config.properties' fixed ports (8080-8082, 7070-7071): they skip when any is busy (a
``make start`` server, another checkout), and each stops its server before the next runs. TMPDIR is
private because TorchServe's launcher keeps its PID file there: ``torchserve --stop`` then stops this
test's server and never someone else's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import psutil
import pytest
import requests

from client.server import registered_models
from handler.server_config import FRONTEND_CLASS
from harness.paths import MAR, MODEL, REPO, SHARED_VIDEOS
from harness.polling import wait_for
from harness.synth import make_video

PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc inference": 7070, "grpc management": 7071}

pytestmark = pytest.mark.integration


def busy_ports() -> List[str]:
    busy = []
    for name, port in PORTS.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name} {port}")
    return busy


def clean_shell(clone: Path, tmp: Path, script: str, name: str, timeout: float = 120) -> Tuple[int, Path]:
    """``script`` in a fresh bash in the clone: nothing inherited but HOME, a system PATH and TMPDIR.

    Output goes to ``tmp/name.log``, not a pipe: the Java frontend inherits it and outlives the shell.
    """
    env = {"HOME": os.environ.get("HOME", str(tmp)), "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(tmp)}
    output = tmp / f"{name}.log"
    with open(output, "wb") as sink:
        done = subprocess.run(
            ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "--noprofile", "--norc", "-c",
             f"cd {shlex.quote(str(clone))} && {script}"],
            stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL,
        )
    return done.returncode, output


def frontends_in(clone: Path) -> List[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        if FRONTEND_CLASS in (process.info["cmdline"] or []) and process.info["cwd"] == str(clone):
            found.append(process)
    return found


@pytest.fixture
def clone(built: Dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    if busy := busy_ports():
        pytest.skip(f"config.properties' fixed ports are in use ({', '.join(busy)}): stop that server to run this test")
    if not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in this checkout: run `make install`")
    target = tmp_path / "slowfast-serve"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(target)], check=True, timeout=120)
    (target / ".venv").symlink_to((REPO / ".venv").resolve())
    mar = target / "model_store" / built["mar"].name
    try:
        os.link(built["mar"], mar)  # same bytes as `make mar` wrote, without copying 128 MB
    except OSError:
        shutil.copy2(built["mar"], mar)
    try:
        yield target
    finally:
        for process in frontends_in(target):  # a failed --stop must not leave a server on 8080
            for child in process.children(recursive=True):
                child.kill()
            process.kill()


def management(clone: Path, method: str, params: Dict[str, Any] | None = None, timeout: float = 10) -> Any:
    key = read_key(clone, "management")
    reply = requests.request(
        method, f"http://127.0.0.1:8081/models/{MODEL}", params=params,
        headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def read_key(clone: Path, api: str) -> str:
    return json.loads((clone / "key_file.json").read_text())[api]["key"]


def wait_workers(clone: Path, count: int, timeout: float) -> List[Dict[str, Any]]:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            workers = management(clone, "GET")[0]["workers"]
            if len(workers) == count and all(w["status"] == "READY" for w in workers):
                return workers
            last = repr([w["status"] for w in workers])
        except (OSError, ValueError, KeyError, AssertionError, requests.RequestException) as exc:
            last = repr(exc)
        time.sleep(0.5)
    log = clone / "logs" / "model_log.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else "(no model log)"
    raise AssertionError(f"{count} READY workers not reached in {timeout:.0f} s ({last}):\n{tail}")


def test_readme_manual_start_from_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    # The README's words, typed as a new user would: activate, then plain `torchserve --start`.
    code, console = clean_shell(clone, tmp_path, "source .venv/bin/activate && torchserve --start", "start")
    try:
        assert code == 0, console.read_text(errors="replace")
        wait_workers(clone, 1, timeout=240)
        # The activated venv says where TorchServe's config comes from, and the frontend and worker used it.
        printed = console.read_text(errors="replace")
        assert f"slowfast-serve: TS_CONFIG_FILE={clone}/config.properties" in printed
        assert f"Config file: {clone}/config.properties" in printed
        log = (clone / "logs" / "model_log.log").read_text(errors="replace")
        assert f"TorchServe config: {clone}/config.properties (TS_CONFIG_FILE=" in log

        # The secure config is what runs: no key -> 400, the key from key_file.json -> an answer.
        clip = make_video(frames=16, width=160, height=120, fps=8)  # 2 s: short to decode
        url = f"http://127.0.0.1:8080/predictions/{MODEL}"
        headers = {"Content-Type": "application/octet-stream"}
        assert requests.post(url, data=clip, headers=headers, timeout=60).status_code == 400
        reply = requests.post(
            url, data=clip, headers={**headers, "Authorization": f"Bearer {read_key(clone, 'inference')}"}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["model"] == MODEL and len(answer["predictions"]) == 5

        # Scale out and back through the management API, as the README's table shows.
        management(clone, "PUT", {"min_worker": 2, "max_worker": 2, "synchronous": "true"}, timeout=300)
        workers = wait_workers(clone, 2, timeout=240)
        assert len({w["pid"] for w in workers}) == 2
        management(clone, "PUT", {"min_worker": 1, "max_worker": 1, "synchronous": "true"}, timeout=120)
        wait_workers(clone, 1, timeout=60)
    finally:
        code, stop_log = clean_shell(clone, tmp_path, "source .venv/bin/activate && torchserve --stop", "stop")
    assert code == 0 and "TorchServe has stopped." in stop_log.read_text(), stop_log.read_text()
    deadline = time.monotonic() + 60
    while frontends_in(clone) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not frontends_in(clone), "torchserve --stop left the frontend running"
    assert not busy_ports(), "a port is still bound after torchserve --stop"


# -- make start / status / predict / stop ----------------------------------------------------------


def make(target: str, tmp: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """``make TARGET`` in the repo root, with this test's private TMPDIR (TorchServe's PID file)."""
    return subprocess.run(["make", "--no-print-directory", target, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TMPDIR": str(tmp)})


def test_make_start_serves_every_registration_until_make_stop(built: Dict[str, Path], tmp_path: Path) -> None:
    if busy := busy_ports():
        pytest.skip(f"config.properties' fixed ports are in use ({', '.join(busy)}): stop that server to run this test")
    assert built["mar"] == MAR and MAR.is_file()
    # The stamps say the .mar is current: `make start` serves it as built, with no export.
    assert subprocess.run(["make", "-q", "mar"], cwd=REPO, capture_output=True).returncode == 0
    video = SHARED_VIDEOS / "tv__WUzgd7C1pWA.mp4"  # the Makefile's default VIDEO
    if not video.is_file():
        pytest.skip(f"shared clip corpus not found at {SHARED_VIDEOS}")
    registrations = registered_models()
    assert MODEL in registrations
    try:
        started = make("start", tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "-m export" not in started.stdout, started.stdout
        assert f"TorchServe is up with {', '.join(registrations)}." in started.stdout, started.stdout
        key = read_key(REPO, "inference")
        assert f"Authorization: Bearer {key}" in started.stdout  # the curl line it prints works as shown

        status = make("status", tmp_path)
        assert status.returncode == 0, status.stderr
        described = json.loads(status.stdout)
        assert [d["modelName"] for d in described] == registrations
        assert all([w["status"] for w in d["workers"]] == ["READY"] for d in described), described

        reply = requests.post(f"http://127.0.0.1:8080/predictions/{MODEL}", data=video.read_bytes(), timeout=300,
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["model"] == MODEL and len(answer["predictions"]) == 5
        predicted = make("predict", tmp_path, f"VIDEO={video}", "TOPK=3")
        assert predicted.returncode == 0, predicted.stderr
        top = answer["predictions"][0]
        assert f"{top['index']}" in predicted.stdout and top["label"] in predicted.stdout, predicted.stdout
    finally:
        stopped = make("stop", tmp_path, timeout=120)
        stopped_cleanly = wait_for(lambda: not frontends_in(REPO), timeout=60, every=0.5)
        for process in frontends_in(REPO):  # a failed stop must not leave a server on 8080
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
    assert stopped.returncode == 0 and "TorchServe has stopped." in stopped.stdout, stopped.stdout + stopped.stderr
    assert stopped_cleanly, "make stop left the frontend running"
    assert wait_for(lambda: not busy_ports(), timeout=30), f"still bound after make stop: {busy_ports()}"
