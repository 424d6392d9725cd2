"""Run an isolated TorchServe on 127.0.0.1 from a .mar: for tests, benchmarks and local experiments.

Each instance gets its own directory (config, logs, key file, model store), free ports for every
API and its own worker-socket range, so several can run side by side and none touches the repo's
own server. The config is the repo's config.properties with only addresses and paths replaced.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import requests

from client.config import read_properties
from client.keys import KeyFileError, Keys, read_keys
from harness.paths import REPO



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TorchServeAddresses:
    """A TorchServe's URLs from its ``properties`` (config.properties keys) and ``model_name``."""

    properties: Dict[str, str]
    model_name: str

    @property
    def inference_url(self) -> str:
        return self.properties["inference_address"]

    @property
    def management_url(self) -> str:
        return self.properties["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.properties["metrics_address"]

    @property
    def predictions_url(self) -> str:
        return self.predictions_url_of(self.model_name)

    def predictions_url_of(self, model_name: str) -> str:
        return f"{self.inference_url}/predictions/{model_name}"


class LocalTorchServe(TorchServeAddresses):
    """A TorchServe process serving ``mar`` from ``workdir``; use as a context manager.

    ``properties`` override config.properties entries (e.g. ``service_envelope``). The model is
    loaded at start-up under ``model_name`` (default: the archive's stem, as `make mar` names it),
    and again under each of ``also_as`` (the repo's config.properties registers it as
    ``<name>_timeline`` too). ``also``: more archives served side by side, each under its stem
    (``predictions_url_of(name)``). ``start`` returns once every registration has a READY worker.
    """

    def __init__(
        self,
        mar: Path,
        workdir: Path,
        properties: Optional[Mapping[str, str]] = None,
        model_name: Optional[str] = None,
        ready_timeout: float = 300.0,
        also_as: Sequence[str] = (),
        also: Sequence[Path] = (),
    ) -> None:
        self.mar = Path(mar).resolve()
        self.also = [Path(m).resolve() for m in also]
        self.workdir = Path(workdir)
        self.model_name = model_name or self.mar.stem
        self.registrations = [self.model_name, *also_as]
        self.ready_timeout = ready_timeout
        self.ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_inf", "grpc_mgmt")}
        self.worker_port = self._free_worker_port()
        self.properties = read_properties(REPO / "config.properties")
        self.properties.update(self._port_properties())
        self.properties.update(
            {
                "model_store": str(self.workdir / "model_store"),
                "load_models": ",".join(
                    [f"{name}={self.mar.name}" for name in self.registrations] + [f"{m.stem}={m.name}" for m in self.also]
                ),
                "initial_worker_port": str(self.worker_port),
            }
        )
        self.properties.update(properties or {})
        self.process: Optional[subprocess.Popen] = None
        self._keys: Optional[Keys] = None

    @staticmethod
    def _free_worker_port() -> int:
        # Workers talk to the frontend over /tmp/.ts.sock.<port>: pick a range no one uses.
        for _ in range(200):
            port = random.randrange(20000, 60000, 16)
            if not any(Path(f"/tmp/.ts.sock.{port + i}").exists() for i in range(16)):
                return port
        raise RuntimeError("no free worker socket range under /tmp")

    # -- addresses and keys ----------------------------------------------------------------

    @property
    def keys(self) -> Keys:
        if self._keys is None:
            self._keys = read_keys(self.workdir)
        return self._keys

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, attempts: int = 2) -> "LocalTorchServe":
        """Start and wait until a worker is READY; retried once on a lost port race."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except RuntimeError as exc:
                # free_port() releases the port before TorchServe binds it: another process may win.
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.ports = {name: free_port() for name in self.ports}
                self.properties.update(self._port_properties())
        raise AssertionError("unreachable")

    def _port_properties(self) -> Dict[str, str]:
        return {
            "inference_address": f"http://127.0.0.1:{self.ports['inference']}",
            "management_address": f"http://127.0.0.1:{self.ports['management']}",
            "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_port": str(self.ports["grpc_inf"]),
            "grpc_management_port": str(self.ports["grpc_mgmt"]),
        }

    def _start_once(self) -> "LocalTorchServe":
        store = self.workdir / "model_store"
        store.mkdir(parents=True, exist_ok=True)
        for mar in [self.mar, *self.also]:
            target = store / mar.name
            if not target.exists():
                try:
                    os.link(mar, target)  # no copy of ~130 MB where the filesystem allows
                except OSError:
                    shutil.copy2(mar, target)
        config = self.workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               # The launcher prefers TS_CONFIG_FILE to --ts-config; an activated venv exports it.
               "TS_CONFIG_FILE": str(config),
               "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir),
               # TorchServe's launcher keeps its PID file in the temp dir: one per instance.
               "TMPDIR": str(self.workdir / "tmp"), "TEMP": str(self.workdir / "tmp")}
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        torchserve = shutil.which("torchserve", path=env["PATH"]) or "torchserve"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [torchserve, "--start", "--foreground", "--ncs", "--ts-config", str(config), "--model-store", str(store)],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=open(self.log_dir / "console.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() ends java and its workers together
        )
        try:
            for name in [*self.registrations, *(mar.stem for mar in self.also)]:
                self.wait_ready(workers=1, timeout=self.ready_timeout, model=name)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, workers: int = 1, timeout: float = 300.0, model: Optional[str] = None) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.tail_logs()}")
            try:
                ready = [w for w in self.workers(model) if w.get("status") == "READY"]
                if len(ready) >= workers:
                    return ready
                last = f"{len(ready)}/{workers} workers READY"
            except (requests.RequestException, KeyFileError, ValueError, IndexError) as exc:
                self._keys = None
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s ({last}):\n{self.tail_logs()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=30)
        self.process = None

    def tail_logs(self, lines: int = 40) -> str:
        chunks = []
        for name in ("model_log.log", "ts_log.log", "console.log"):
            path = self.log_dir / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(chunks) or "(no logs)"

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- APIs ------------------------------------------------------------------------------

    def describe(self, model: Optional[str] = None) -> Dict[str, Any]:
        reply = requests.get(
            f"{self.management_url}/models/{model or self.model_name}", headers=self.keys.management_header(), timeout=10
        )
        reply.raise_for_status()
        return reply.json()[0]

    def workers(self, model: Optional[str] = None) -> List[Dict[str, Any]]:
        return list(self.describe(model).get("workers", []))

    def scale(self, min_worker: int, max_worker: Optional[int] = None, timeout: float = 300.0) -> requests.Response:
        params = {"min_worker": min_worker, "synchronous": "true"}
        if max_worker is not None:
            params["max_worker"] = max_worker
        return requests.put(
            f"{self.management_url}/models/{self.model_name}", params=params,
            headers=self.keys.management_header(), timeout=timeout,
        )

    def predict(
        self, video: bytes, headers: Optional[Mapping[str, str]] = None, timeout: float = 300.0,
        model_name: Optional[str] = None,
    ) -> requests.Response:
        """POST raw video bytes with the inference key to ``model_name`` (default: the main model);
        extra ``headers`` (e.g. ``{"topk": "10"}``)."""
        all_headers = {"Content-Type": "application/octet-stream", **self.keys.inference_header(), **(headers or {})}
        url = self.predictions_url_of(model_name or self.model_name)
        return requests.post(url, data=video, headers=all_headers, timeout=timeout)

    def metrics(self) -> str:
        reply = requests.get(f"{self.metrics_url}/metrics", timeout=10)
        reply.raise_for_status()
        return reply.text
