"""Which config file the TorchServe frontend that started this worker read, and refusing to serve without one.

A worker sees nothing of the frontend's settings through its context (``system_properties`` holds
model_dir, gpu_id, batch_size, server name/version), so it looks at its parent, the Java frontend
(``org.pytorch.serve.ModelServer``), and repeats the lookup of TorchServe 0.12's ``ConfigManager``:

1. ``TS_CONFIG_FILE`` in the frontend's environment (it wins over the flag);
2. ``-f FILE`` on the frontend's command line (the launcher's ``--ts-config``);
3. unless snapshots are off (``-ncs``), the newest ``{LOG_LOCATION or logs}/config/*.cfg``
   snapshot; a snapshot of a start that read a file carries ``tsConfigFile``;
4. ``config.properties`` in the frontend's working directory.

Relative paths are the frontend's, resolved against its working directory. When none of these is
a file, the frontend runs on TorchServe's built-in defaults: a 6.5 MB request limit (most videos
refused), any URL allowed as a model source, metrics only in logs, two workers per CPU model. A
user who types ``torchserve --start --model-store ... --models ...`` outside the repo gets exactly
that; the worker refuses to load and says how to start it with the repo's config.properties.

Outside TorchServe (unit tests, the benchmark's in-process handler) there is no frontend and no check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import psutil

log = logging.getLogger(__name__)

FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
SNAPSHOT_MARK = "tsConfigFile"  # ConfigManager adds it to the properties whenever it reads a file

FIX = (
    "Start TorchServe with this repo's config.properties: `make start`; or `source .venv/bin/activate` "
    "(it exports TS_CONFIG_FILE) and then `torchserve --start` in the repo root; or "
    "`torchserve --start --ts-config /path/to/slowfast-serve/config.properties`."
)


class ServerConfigError(RuntimeError):
    """The frontend runs on TorchServe's built-in defaults: the worker must not serve."""


@dataclass(frozen=True)
class FrontendConfig:
    """Where the frontend's settings came from: ``path`` is None for TorchServe's built-in defaults."""

    path: Optional[Path]
    source: str


@dataclass(frozen=True)
class FrontendView:
    """What a worker can see of its frontend process: command line, environment, working directory."""

    cmdline: List[str]
    environ: Dict[str, str]
    cwd: Path


def find_frontend(process: Optional[psutil.Process] = None) -> Optional[FrontendView]:
    """The nearest ancestor running TorchServe's Java frontend, or None outside TorchServe."""
    try:
        current = process or psutil.Process()
        for ancestor in current.parents():
            cmdline = ancestor.cmdline()
            if FRONTEND_CLASS in cmdline:
                return FrontendView(cmdline=cmdline, environ=ancestor.environ(), cwd=Path(ancestor.cwd()))
    except psutil.Error as exc:
        # Another user's frontend (containers with dropped ptrace rights): say so, don't guess.
        log.warning("cannot inspect the TorchServe frontend (%s): config file not checked", exc)
    return None


def _flag_value(cmdline: List[str], flag: str) -> Optional[str]:
    for index, arg in enumerate(cmdline[:-1]):
        if arg == flag:
            return cmdline[index + 1]
    return None


def _newest_snapshot(frontend: FrontendView) -> Optional[Path]:
    directory = frontend.cwd / (frontend.environ.get("LOG_LOCATION") or "logs") / "config"
    try:
        # Snapshot names start with a millisecond timestamp: the greatest is the newest.
        snapshots = sorted(directory.glob("*.cfg"))
    except OSError:
        return None
    return snapshots[-1] if snapshots else None


def frontend_config(frontend: FrontendView) -> FrontendConfig:
    """The config file the frontend read, found as TorchServe 0.12's ConfigManager finds it."""
    for path, source in (
        (frontend.environ.get("TS_CONFIG_FILE"), "TS_CONFIG_FILE"),
        (_flag_value(frontend.cmdline, "-f"), "--ts-config"),
    ):
        if path:
            resolved = frontend.cwd / path
            # ConfigManager stops at the first name given, even one that is not a file.
            return FrontendConfig(resolved if resolved.is_file() else None, f"{source}={path}")
    if "-ncs" not in frontend.cmdline:
        snapshot = _newest_snapshot(frontend)
        if snapshot is not None:
            text = snapshot.read_text(errors="replace")
            read_a_file = any(line.startswith(SNAPSHOT_MARK + "=") for line in text.splitlines())
            return FrontendConfig(snapshot if read_a_file else None, f"snapshot {snapshot}")
    default = frontend.cwd / "config.properties"
    return FrontendConfig(
        default if default.is_file() else None, f"config.properties in the working directory {frontend.cwd}"
    )


def require_config_file(frontend: Optional[FrontendView] = None) -> Optional[FrontendConfig]:
    """Raise ServerConfigError (after logging it) when TorchServe runs without a config file.

    ``frontend`` defaults to this process's TorchServe frontend; returns None when there is none
    (not a TorchServe worker), else where the frontend's config came from.
    """
    frontend = frontend if frontend is not None else find_frontend()
    if frontend is None:
        return None
    found = frontend_config(frontend)
    if found.path is None:
        message = (
            f"TorchServe was started without a config file (looked at {found.source}): it runs on "
            "TorchServe's built-in defaults (6.5 MB request limit, any URL allowed as a model source, "
            f"log-only metrics), not slowfast-serve's secure config.properties. Refusing to load. {FIX}"
        )
        log.error(message)
        raise ServerConfigError(message)
    log.info("TorchServe config: %s (%s)", found.path, found.source)
    return found

