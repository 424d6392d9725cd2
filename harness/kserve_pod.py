"""A rehearsal of the KServe pod on 127.0.0.1: the layout, the runtime's command, real ports.

``KServePod`` builds the layout ``make kserve`` builds (``deploy.kserve.build``) into a folder that
stands in for ``/mnt/models``, remaps only what must differ to run beside other servers (TorchServe's
addresses, gRPC ports and worker-socket range in the built config), and starts the model server with
the command and args of ``deploy/kserve/servingruntime.yaml``: the same module and flags, with this
checkout's ``.venv-kserve`` python for the image's ``/opt/kserve-venv`` one, free ports for 8080/8081,
the temporary folder for ``/mnt/models`` and this venv's ``torchserve``. For tests and the bench.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import requests
import yaml

from client.config import read_properties
from deploy.kserve.build import build
from harness.paths import REPO
from harness.torchserve import LocalTorchServe, TorchServeAddresses, free_port

RUNTIME_MANIFEST = REPO / "deploy" / "kserve" / "servingruntime.yaml"
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"


def runtime_container() -> Dict[str, Any]:
    """The ``kserve-container`` of the slowfast-serve ServingRuntime."""
    runtime = yaml.safe_load(RUNTIME_MANIFEST.read_text())
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def pod_argv(overrides: Mapping[str, str], python: Path = KSERVE_PYTHON) -> List[str]:
    """The runtime's command + args, with ``--flag=value`` args replaced by ``overrides[--flag]``."""
    container = runtime_container()
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        args.append(f"{flag}={overrides.get(flag, value)}")
    return [str(python), *container["command"][1:], *args]


class KServePod(TorchServeAddresses):
    """The model server and its TorchServe from a freshly built layout, on free loopback ports.

    ``inference_url`` etc. are the TorchServe's behind the server, for direct comparison (same
    process, same answers); ``url`` and ``grpc_target`` are the model server's."""

    def __init__(self, mar: Path, workdir: Path, env: Optional[Mapping[str, str]] = None) -> None:
        self.mar = Path(mar)
        self.workdir = Path(workdir)
        self.model_dir = self.workdir / "models"  # stands in for /mnt/models
        self.extra_env = dict(env or {})
        self.http_port, self.grpc_port = free_port(), free_port()
        ts_port = free_port()
        self.properties = {
            "inference_address": f"http://127.0.0.1:{ts_port}",
            "management_address": f"http://127.0.0.1:{ts_port}",
            "metrics_address": f"http://127.0.0.1:{free_port()}",
            "grpc_inference_port": str(free_port()),
            "grpc_management_port": str(free_port()),
            "initial_worker_port": str(LocalTorchServe._free_worker_port()),
        }
        self.process: Optional[subprocess.Popen] = None
        self.not_ready_seen = False  # /v2/health/ready answered 503 while the server was live
        self.model_name = ""

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def torchserve_pid_file(self) -> Path:
        return self.workdir / "tmp" / ".model_server.pid"

    def argv(self) -> List[str]:
        torchserve = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        return pod_argv({"--model_dir": str(self.model_dir), "--http_port": str(self.http_port),
                         "--grpc_port": str(self.grpc_port), "--torchserve": torchserve})

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, ready_timeout: float = 600.0) -> "KServePod":
        if not KSERVE_PYTHON.is_file():
            raise FileNotFoundError(f"{KSERVE_PYTHON} not found: run `make install` (it creates .venv-kserve)")
        paths = build(self.mar, self.model_dir)
        config = paths["config"]
        values = read_properties(config)
        values.update(self.properties)
        config.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.model_name = next(iter(json.loads(values["model_snapshot"])["models"]))
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env, "TMPDIR": str(self.workdir / "tmp"),
               "LOG_LOCATION": str(self.workdir / "logs"), "METRICS_LOCATION": str(self.workdir / "logs")}
        env.pop("TS_CONFIG_FILE", None)
        self.process = subprocess.Popen(self.argv(), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"model server exited with {self.process.returncode}:\n{self.tail_log()}")
            try:
                live = requests.get(f"{self.url}/v2/health/live", timeout=5).status_code == 200
                ready = requests.get(f"{self.url}/v2/health/ready", timeout=5).status_code
            except requests.RequestException:
                live, ready = False, 0
            if ready == 200:
                return
            self.not_ready_seen |= live and ready == 503
            time.sleep(0.5)
        raise TimeoutError(f"model server not ready after {timeout:.0f} s:\n{self.tail_log()}")

    def torchserve_pid(self) -> Optional[int]:
        try:
            return int(self.torchserve_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM the server (it stops TorchServe) and return its exit code (None: it had to be killed).

        Whatever is left is killed: the server's group while it is unreaped, and TorchServe's group
        (its own session) if its Java frontend still runs.
        """
        if self.process is None:
            return None
        java = self.torchserve_pid()
        code: Optional[int] = None
        try:
            self.process.send_signal(signal.SIGTERM)
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        if java is not None and self.torchserve_running(java):
            os.killpg(os.getpgid(java), signal.SIGKILL)
        self.process = None
        return code

    @staticmethod
    def torchserve_running(pid: int) -> bool:
        """``pid`` is alive and is a TorchServe frontend (not a reused pid)."""
        try:
            return b"org.pytorch.serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def tail_log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "KServePod":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
