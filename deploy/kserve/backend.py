"""The TorchServe behind the KServe model server: read the layout, start it, wait for it, stop it.

The layout is what ``python -m deploy.kserve.build`` writes and KServe's storage initializer copies
to ``/mnt/models``: ``config/config.properties`` (addresses, snapshot, token auth off) and
``model-store/<model>.mar``. This module runs in the kserve virtualenv: it imports nothing from
torch, torchserve or av; TorchServe is another program (``--torchserve``, from its own venv).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import httpx

from client.config import read_properties

logger = logging.getLogger(__name__)

CONFIG = Path("config") / "config.properties"
MODEL_STORE = Path("model-store")


class LayoutError(ValueError):
    """The model directory is not a layout this server can run."""


@dataclass(frozen=True)
class Layout:
    """What the server needs from ``<model_dir>/config/config.properties``.

    ``models``: the registrations in ``model_snapshot`` (TorchServe loads exactly these at start).
    ``response_timeout_s``: the longest ``responseTimeout`` among them: how long a forward may take.
    """

    model_dir: Path
    config: Path
    model_store: Path
    inference_url: str
    management_url: str
    models: List[str]
    response_timeout_s: float
    max_request_bytes: int


def read_layout(model_dir: Path) -> Layout:
    """Read and check the layout; ``LayoutError`` names what is missing or unusable."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG
    if not config.is_file():
        raise LayoutError(f"{config} not found: model_dir must hold the output of `make kserve` (config/, model-store/)")
    values = read_properties(config)
    if values.get("disable_token_authorization") != "true":
        # The proxy sends no TorchServe key (it cannot know the generated one): the pod's config turns tokens off.
        raise LayoutError(f"{config} must set disable_token_authorization=true (build it with python -m deploy.kserve.build)")
    if values.get("service_envelope"):
        raise LayoutError(f"{config} sets service_envelope: this server needs the handler's own v1/v2 parsing")
    try:
        snapshot = json.loads(values["model_snapshot"])
        entries: Dict[str, Dict[str, dict]] = snapshot["models"]
    except (KeyError, ValueError) as exc:
        raise LayoutError(f"{config} has no readable model_snapshot: {exc!r}") from None
    if not entries:
        raise LayoutError(f"{config}: model_snapshot names no model")
    timeouts = [float(v.get("responseTimeout", 120)) for versions in entries.values() for v in versions.values()]
    inference = values.get("inference_address", "http://127.0.0.1:8080").rstrip("/")
    return Layout(
        model_dir=model_dir,
        config=config,
        model_store=model_dir / MODEL_STORE,
        inference_url=inference,
        management_url=values.get("management_address", inference).rstrip("/"),
        models=list(entries),
        response_timeout_s=max(timeouts),
        max_request_bytes=int(values.get("max_request_size", 6553500)),
    )


class TorchServeChild:
    """TorchServe as a child process of the model server, in its own process group.

    The launcher (``torchserve --foreground``) does not pass signals on to its Java frontend, so
    ``stop`` signals the whole group: launcher, frontend and Python workers end together.
    """

    def __init__(self, layout: Layout, torchserve: str = "torchserve") -> None:
        self.layout = layout
        found = shutil.which(torchserve)
        if found is None:
            raise FileNotFoundError(f"TorchServe launcher {torchserve!r} not found (give --torchserve PATH)")
        self.torchserve = os.path.abspath(found)
        self.process: Optional[subprocess.Popen] = None
        self.stopping = False  # set by stop(): its exit is then expected

    def command(self) -> List[str]:
        return [self.torchserve, "--start", "--foreground", "--ncs",
                "--ts-config", str(self.layout.config), "--model-store", str(self.layout.model_store)]

    def start(self) -> "TorchServeChild":
        env = dict(os.environ)
        # The launcher prefers TS_CONFIG_FILE to --ts-config: an inherited one must not win.
        env["TS_CONFIG_FILE"] = str(self.layout.config)
        # TorchServe writes logs/ under its working directory unless told; a pod's may be read-only.
        logs = env.setdefault("LOG_LOCATION", str(Path(tempfile.gettempdir()) / "torchserve-logs"))
        env.setdefault("METRICS_LOCATION", logs)
        # TorchServe's launcher keeps its pid file in the temp dir; the bin dir next to it holds java's python.
        env["PATH"] = f"{Path(self.torchserve).parent}{os.pathsep}{env.get('PATH', '')}"
        logger.info("starting TorchServe: %s", " ".join(self.command()))
        self.process = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL,
                                        cwd=tempfile.gettempdir(), start_new_session=True)
        return self

    @property
    def exit_code(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def model_ready(self, name: str, client: httpx.Client) -> bool:
        """True once TorchServe reports a READY worker for ``name`` (its management API)."""
        try:
            reply = client.get(f"{self.layout.management_url}/models/{name}")
            return reply.status_code == 200 and any(w.get("status") == "READY" for w in reply.json()[0]["workers"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return False

    def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Block until every snapshot model has a READY worker; raise if TorchServe exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.layout.models)
        with httpx.Client(timeout=5.0) as client:
            while pending:
                if self.exit_code is not None:
                    raise RuntimeError(f"TorchServe exited with {self.exit_code} before its models loaded")
                pending = [name for name in pending if not self.model_ready(name, client)]
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"TorchServe models not ready after {timeout_s:.0f} s: {pending}")
                if pending:
                    time.sleep(poll_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM TorchServe's process group, wait until no member runs, SIGKILL what is left.

        Waiting for the launcher is not enough: it dies at once while Java shuts down after it.
        """
        self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        group = self.process.pid  # start_new_session: the launcher leads its own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            if self._wait_group_gone(group, timeout_s):
                break

    def _wait_group_gone(self, group: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()
            _reap_orphans()
            if not _group_running(group):
                return True
            time.sleep(0.2)
        return False


def _group_running(group: int) -> bool:
    """Whether any process of ``group`` still runs (zombies do not count). Linux: reads /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _reap_orphans() -> None:
    """As a container's PID 1, the server inherits TorchServe's orphaned workers: reap their zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
