"""A worker refuses to serve when its TorchServe frontend read no config file (issue 14).

The frontend is described by a ``FrontendView`` (command line, environment, working directory)
exactly as ``find_frontend`` reads it from the parent Java process; the lookup order is TorchServe
0.12's ConfigManager: TS_CONFIG_FILE, ``-f``, the newest snapshot unless ``-ncs``, ./config.properties.
One test runs ``find_frontend`` against a real process tree (a stand-in "frontend" whose command
line names the frontend class), since that is what a worker sees.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from handler.server_config import (
    FRONTEND_CLASS, FrontendView, ServerConfigError, find_frontend, frontend_config, require_config_file,
)
from harness.paths import MODEL

JAVA = ["java", "-cp", "ts/frontend/*", FRONTEND_CLASS, "--python", sys.executable]


def view(cwd: Path, args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> FrontendView:
    return FrontendView(cmdline=JAVA + (args or []), environ=dict(env or {}), cwd=cwd)


def write(path: Path, text: str = "inference_address=http://127.0.0.1:8080\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_from_elsewhere_are_refused_with_the_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`torchserve --start --model-store X --models ...` in a directory without config.properties."""
    frontend = view(tmp_path, ["-s", "/srv/model_store", "-m", f"{MODEL}={MODEL}.mar"])
    with caplog.at_level(logging.ERROR), pytest.raises(ServerConfigError) as raised:
        require_config_file(frontend)
    message = str(raised.value)
    assert "without a config file" in message and "built-in defaults" in message
    assert f"config.properties in the working directory {tmp_path}" in message
    assert "make start" in message and "source .venv/bin/activate" in message and "--ts-config" in message
    assert message in caplog.text  # the worker's log names the fix, not only the traceback


def test_config_properties_in_the_frontends_directory_is_read(tmp_path: Path) -> None:
    """The same command from the repo root: the Java frontend reads ./config.properties itself."""
    config = write(tmp_path / "config.properties")
    found = require_config_file(view(tmp_path, ["-s", "model_store", "-ncs"]))
    assert found is not None and found.path == config


def test_ts_config_file_wins_over_the_flag_and_the_directory(tmp_path: Path) -> None:
    env_config = write(tmp_path / "repo" / "config.properties")
    write(tmp_path / "flag.properties")
    write(tmp_path / "config.properties")
    found = frontend_config(view(tmp_path, ["-f", "flag.properties"], {"TS_CONFIG_FILE": str(env_config)}))
    assert found.path == env_config and found.source == f"TS_CONFIG_FILE={env_config}"


def test_flag_is_resolved_against_the_frontends_directory(tmp_path: Path) -> None:
    flag = write(tmp_path / "conf" / "ts.properties")
    found = frontend_config(view(tmp_path, ["-f", "conf/ts.properties"]))
    assert found.path == flag and found.source == "--ts-config=conf/ts.properties"


@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_named_file_that_is_missing_means_defaults(tmp_path: Path, how: str) -> None:
    """ConfigManager stops at the first name given: ./config.properties is not read after it."""
    write(tmp_path / "config.properties")
    missing = str(tmp_path / "gone.properties")
    frontend = view(tmp_path, env={"TS_CONFIG_FILE": missing}) if how == "env" else view(tmp_path, ["-f", missing])
    with pytest.raises(ServerConfigError, match="gone.properties"):
        require_config_file(frontend)


def test_snapshot_of_a_configured_start_counts_and_one_of_defaults_does_not(tmp_path: Path) -> None:
    """Without -ncs and without a named file, the frontend restores its newest snapshot first."""
    write(tmp_path / "config.properties")  # not read: the snapshot comes first
    snapshots = tmp_path / "logs" / "config"
    write(snapshots / "20260101000000000-shutdown.cfg", "tsConfigFile=/repo/config.properties\nmodel_store=x\n")
    newest = write(snapshots / "20260102000000000-startup.cfg", "model_store=x\nload_models=a.mar\n")
    with pytest.raises(ServerConfigError, match=f"snapshot {newest}"):
        require_config_file(view(tmp_path, ["-s", "x"]))
    write(snapshots / "20260103000000000-startup.cfg", "tsConfigFile=/repo/config.properties\n")
    assert frontend_config(view(tmp_path, ["-s", "x"])).path == snapshots / "20260103000000000-startup.cfg"
    # With -ncs the snapshots are ignored and ./config.properties is read.
    assert frontend_config(view(tmp_path, ["-s", "x", "-ncs"])).path == tmp_path / "config.properties"


def test_snapshots_follow_log_location(tmp_path: Path) -> None:
    logs = tmp_path / "elsewhere"
    snapshot = write(logs / "config" / "1-startup.cfg", "tsConfigFile=/repo/config.properties\n")
    assert frontend_config(view(tmp_path, env={"LOG_LOCATION": str(logs)})).path == snapshot


def test_not_a_torchserve_worker_is_not_checked(tmp_path: Path) -> None:
    """Unit tests and the benchmark drive the handler in-process: pytest's ancestors run no frontend."""
    assert find_frontend() is None
    assert require_config_file() is None


def test_find_frontend_reads_the_parent_process(tmp_path: Path) -> None:
    """A child of a process whose command line names the frontend class sees its cwd and environment."""
    child = (
        "import json, sys; sys.path.insert(0, %r);"
        "from handler.server_config import find_frontend; f = find_frontend();"
        "print(json.dumps([f.cwd.as_posix(), f.environ.get('TS_CONFIG_FILE'), f.cmdline[-1]]))"
    ) % str(Path(__file__).resolve().parent.parent)
    # bash -c 'exec -a NAME' cannot set argv beyond [0]; a parent python that names the class in argv
    # and spawns the child stands in for java.
    parent = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {child!r}]))"
    done = subprocess.run(
        [sys.executable, "-c", parent, FRONTEND_CLASS, "-s", "model_store"],
        cwd=tmp_path, env={"TS_CONFIG_FILE": "/repo/config.properties", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'["{tmp_path.resolve().as_posix()}", "/repo/config.properties", "model_store"]'
