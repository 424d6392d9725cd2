"""``python -m deploy.kserve.server``: the pod's model server, KServe's protocols in front of TorchServe.

The ``slowfast-serve`` ServingRuntime runs (deploy/kserve/servingruntime.yaml)::

    /opt/kserve-venv/bin/python -m deploy.kserve.server --model_dir /mnt/models \\
        --http_port 8080 --grpc_port 8081 --torchserve /opt/venv/bin/torchserve

which starts TorchServe (``--torchserve``, from the serving venv) on the layout that
``python -m deploy.kserve.build`` wrote and KServe's storage initializer copied to ``--model_dir``,
registers one kserve model per TorchServe registration (``deploy.kserve.proxy``), and serves REST
v1, REST v2 and gRPC v2 on the kserve SDK's ``ModelServer`` (every ``kserve.model_server`` flag
applies: ``--http_port``, ``--grpc_port``, ``--enable_grpc`` ...). Liveness answers at once;
readiness (``/v2/health/ready``, ``/v1/models/<name>``, gRPC ``ServerReady``) turns true only once
TorchServe has a READY worker for every model. TorchServe stops when the server stops, and the
server exits (code 1) if TorchServe dies, so that the kubelet restarts the pod.

Runs in the kserve virtualenv (requirements-kserve.txt): kserve pins psutil<6 and its own protobuf,
which the serving venv cannot share. Nothing here imports torch, torchserve or av.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import httpx
from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.protocol.dataplane import DataPlane

from deploy.kserve.backend import Layout, TorchServeChild, read_layout
from deploy.kserve.body_limit import BodyLimit
from deploy.kserve.proxy import TorchServeError, TorchServeModel, torchserve_error_response

logger = logging.getLogger("deploy.kserve.server")
# One line per readiness poll and per forwarded request would drown TorchServe's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Loading SlowFast takes about a minute on CPU; a cold GPU node (CUDA init) takes longer.
DEFAULT_LOAD_TIMEOUT_S = 900.0


class TorchServeReadiness(DataPlane):
    """kserve's data plane, except that the server is ready only when every model is."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        return bool(models) and all([await model.healthy() for model in models.values()])


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.kserve.server", parents=[kserve_model_server.parser],
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", "--model-dir", dest="model_dir", type=Path, default=Path("/mnt/models"),
                        help="the layout from `make kserve` (config/, model-store/); KServe mounts it at /mnt/models")
    parser.add_argument("--torchserve", default="torchserve",
                        help="TorchServe's launcher, from the serving venv (default: the one on PATH)")
    parser.add_argument("--load_timeout_s", "--load-timeout-s", dest="load_timeout_s", type=float,
                        default=DEFAULT_LOAD_TIMEOUT_S, help="give up (exit 1) if the models are not ready by then")
    return parser.parse_args(argv)


def wait_then_mark_ready(child: TorchServeChild, models: List[TorchServeModel], timeout_s: float,
                         failed: threading.Event) -> None:
    """Background: models turn ready once TorchServe's are; the server exits if TorchServe dies."""
    try:
        child.wait_ready(timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        logger.error("TorchServe did not become ready: %s", exc)
        failed.set()
        os.kill(os.getpid(), signal.SIGTERM)
        return
    for model in models:
        model.ready = True
    logger.info("TorchServe ready: serving %s", ", ".join(m.name for m in models))
    if child.process is not None:
        code = child.process.wait()
        for model in models:
            model.ready = False
        if child.stopping:
            return
        logger.error("TorchServe exited with %s: stopping the model server", code)
        failed.set()
        os.kill(os.getpid(), signal.SIGTERM)


def build_server(args: argparse.Namespace, layout: Layout, models: List[TorchServeModel]) -> ModelServer:
    # kserve's gRPC server takes its message limits from kserve.model_server.args: TorchServe's
    # max_request_size is the one limit (a bigger video gets RESOURCE_EXHAUSTED, as REST gets 413).
    kserve_model_server.args.grpc_max_receive_message_length = layout.max_request_bytes
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                         workers=1, grace_period=10)
    server.dataplane = TorchServeReadiness(model_registry=server.registered_models)
    for model in models:
        server.register_model(model)
    kserve_model_server.app.add_exception_handler(TorchServeError, torchserve_error_response)
    # REST bodies bounded before kserve reads them whole (deploy/kserve/body_limit.py).
    kserve_model_server.app.add_middleware(BodyLimit, max_bytes=layout.max_request_bytes)
    return server


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    layout = read_layout(args.model_dir)
    child = TorchServeChild(layout, args.torchserve).start()
    failed = threading.Event()
    exit_code = 1
    try:
        timeout = httpx.Timeout(layout.response_timeout_s + 10.0, connect=10.0)
        client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        models = [TorchServeModel(name, layout.inference_url, client) for name in layout.models]
        server = build_server(args, layout, models)
        threading.Thread(target=wait_then_mark_ready, args=(child, models, args.load_timeout_s, failed),
                         name="torchserve-readiness", daemon=True).start()
        # models=[]: they are registered above, not ready; kserve would refuse to start with none ready.
        server.start([])
        exit_code = 1 if failed.is_set() else 0
    finally:
        # Shutting down: a second SIGTERM/SIGINT must not interrupt stopping TorchServe.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        child.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
