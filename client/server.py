"""``python -m client.server start|stop|status|scale``: run TorchServe from this repo's root.

``start`` runs ``torchserve --start`` with the repo's config.properties, waits until every model
it loads (load_models: slowfast_r50, and slowfast_r50_timeline for long timelines) has its
workers READY (or fails with the end of the model log), then prints how to call it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import requests

from client.keys import KeyFileError, read_keys
from client.config import REPO, repo_property
from client.endpoint import TIMELINE_SUFFIX, ClientError, default_model


def management_url() -> str:
    return repo_property("management_address", "http://127.0.0.1:8081")


def inference_url() -> str:
    return repo_property("inference_address", "http://127.0.0.1:8080")


def _torchserve() -> str:
    candidate = Path(sys.executable).with_name("torchserve")
    return str(candidate) if candidate.exists() else "torchserve"


def registered_models() -> List[str]:
    """The names config.properties load_models registers (``name=archive.mar``, comma-separated)."""
    entries = [e.strip() for e in repo_property("load_models", "").split(",") if e.strip()]
    return [e.split("=", 1)[0] if "=" in e else Path(e).stem for e in entries] or [default_model()]


def describe(timeout: float = 5.0, model: Optional[str] = None) -> list:
    model = model or default_model()
    keys = read_keys(REPO)
    reply = requests.get(f"{management_url()}/models/{model}", headers=keys.management_header(), timeout=timeout)
    reply.raise_for_status()
    return reply.json()


def wait_ready(deadline_s: float, workers: int = 1, model: Optional[str] = None) -> list:
    model = model or default_model()
    stop_at = time.monotonic() + deadline_s
    last_error = "no answer yet"
    while time.monotonic() < stop_at:
        try:
            described = describe(model=model)
            ready = [w for w in described[0].get("workers", []) if w.get("status") == "READY"]
            if len(ready) >= workers:
                return described
            last_error = f"{len(ready)} of {workers} workers ready"
        except (requests.RequestException, KeyFileError, ValueError, IndexError) as exc:
            last_error = str(exc)
        time.sleep(1.0)
    raise TimeoutError(f"model {model} not ready after {deadline_s:.0f} s ({last_error})")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(timeout_s: float, models: Optional[List[str]] = None) -> int:
    """Start TorchServe serving ``models`` (names of model_store/NAME.mar; default: config.properties'
    load_models) side by side, and wait until each has a READY worker."""
    served = models or [default_model()]
    for name in served:
        if not (REPO / "model_store" / f"{name}.mar").exists():
            print(f"model_store/{name}.mar is missing: run `make mar MODEL={name}` first", file=sys.stderr)
            return 1
    # --models overrides config.properties' load_models for this start; each model also gets its
    # registration for long timelines, as load_models gives the default one.
    if models:
        registrations = [r for name in served for r in (name, f"{name}{TIMELINE_SUFFIX}")]
        chosen = ["--models", *[f"{r}={name}.mar" for name in served for r in (name, f"{name}{TIMELINE_SUFFIX}")]]
    else:
        registrations, chosen = registered_models(), []
    # TS_CONFIG_FILE wins over --ts-config in the launcher: set it too, to this repo's file.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TS_CONFIG_FILE": str(REPO / "config.properties")}
    # --ncs: no config snapshots, so each start reads config.properties afresh.
    # The daemon must not inherit our stdout: a pipe reader (`make start | tail`) would never see EOF.
    subprocess.run(
        [_torchserve(), "--start", "--ncs", "--ts-config", "config.properties", *chosen],
        cwd=REPO, env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        stop_at = time.monotonic() + timeout_s
        for model in registrations:
            wait_ready(max(1.0, stop_at - time.monotonic()), model=model)
    except TimeoutError as exc:
        print(f"{exc}\n--- logs/model_log.log ---\n{_tail(REPO / 'logs' / 'model_log.log')}", file=sys.stderr)
        return 1
    keys = read_keys(REPO)
    print(
        f"\nTorchServe is up with {', '.join(registrations)}.\n"
        f"  inference key: {keys.inference}   (key_file.json; new keys on every start)\n\n"
        f"  curl -H \"Authorization: Bearer {keys.inference}\" -H \"Content-Type: application/octet-stream\" \\\n"
        f"       --data-binary @../shared/videos/tv__WUzgd7C1pWA.mp4 {inference_url()}/predictions/{served[0]}\n"
        f"  long timelines (-H \"timeline: true\" -H \"stream: true\"): "
        f"{inference_url()}/predictions/{served[0]}{TIMELINE_SUFFIX}\n\n"
        f"  make predict VIDEO=clip.mp4     make scale WORKERS=2     make stop\n"
    )
    return 0


def stop() -> int:
    subprocess.run([_torchserve(), "--stop"], cwd=REPO, check=False)
    return 0


def status() -> int:
    try:
        print(json.dumps([entry for model in registered_models() for entry in describe(model=model)], indent=2))
    except (requests.RequestException, KeyFileError) as exc:
        print(f"TorchServe is not answering on {management_url()}: {exc}", file=sys.stderr)
        return 1
    return 0


def scale(workers: int, timeout_s: float, url: Optional[str] = None, key_file: Optional[Path] = None,
          model: Optional[str] = None) -> int:
    """PUT min_worker=max_worker=``workers`` (synchronous) for ``model`` on this repo's server, or on
    ``url`` with the management key of ``key_file``."""
    try:
        keys = read_keys(key_file.parent, key_file.name) if key_file else read_keys(REPO)
    except KeyFileError as exc:
        print(f"cannot read the management key: {exc}", file=sys.stderr)
        return 1
    reply = requests.put(
        f"{(url or management_url()).rstrip('/')}/models/{model or default_model()}",
        params={"min_worker": workers, "max_worker": max(workers, 1), "synchronous": "true"},
        headers=keys.management_header(),
        timeout=timeout_s,
    )
    print(reply.text.strip())
    return 0 if reply.ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.server")
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start")
    start_cmd.add_argument("--timeout", type=float, default=300)
    start_cmd.add_argument("--models", nargs="*", default=None, help="names of model_store/NAME.mar to serve (default: config.properties' load_models)")
    sub.add_parser("stop")
    sub.add_parser("status")
    scale_cmd = sub.add_parser("scale")
    scale_cmd.add_argument("--workers", type=int, required=True)
    scale_cmd.add_argument("--timeout", type=float, default=300)
    scale_cmd.add_argument("--url", default=None, help="management address (default: config.properties)")
    scale_cmd.add_argument("--key-file", type=Path, default=None, help="key_file.json (default: the repo's)")
    scale_cmd.add_argument("--model", default=None,
                           help=f"which registration (default: the first of config.properties' load_models; "
                                f"NAME{TIMELINE_SUFFIX} takes long timelines)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ClientError as exc:  # no model named and none in config.properties
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "start":
        return start(args.timeout, args.models)
    if args.command == "stop":
        return stop()
    if args.command == "status":
        return status()
    return scale(args.workers, args.timeout, args.url, args.key_file, args.model)


if __name__ == "__main__":
    sys.exit(main())
