"""KServe: the built layout, the manifests, and the pod rehearsed on 127.0.0.1.

The pod (default run, one start for the module): ``harness.kserve_pod.KServePod`` builds the layout
``make kserve`` builds into a temporary folder standing in for ``/mnt/models`` (TorchServe's
addresses, gRPC ports and worker sockets remapped, nothing else) and starts the model server with
the ServingRuntime's own command and args (``.venv-kserve``'s python, free ports for 8080/8081,
this venv's ``torchserve``), with ``TS_SERVICE_ENVELOPE=kservev2`` in its environment as KServe's
stock runtime set it — TorchServe must ignore it. Every KServe answer (REST v1, REST v2, gRPC v2)
is compared with the answer of the TorchServe behind it for the same clip, within 1e-4; TorchServe's
own KServe routes (``TestTorchServeRoutes``) with the plain raw-bytes answer, within 1e-5.
The ``kserve`` and ``kservev2`` stock envelopes (slow) each start a TorchServe of their own.
"""

from __future__ import annotations

import base64
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests
import torch
import yaml

from client.keys import Keys
from client.config import read_properties
from harness.kserve_pod import KSERVE_PYTHON, KServePod, runtime_container
from harness.paths import REPO
from harness.torchserve import LocalTorchServe
from deploy.kserve.build import build, kserve_properties, mar_facts

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kserve"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))
CLIPS = ("ii__realshort.mp4", "dc__video_90.mov", "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi")
# What LocalTorchServe must own to run beside other servers; everything else comes from the build.
REMAPPED = ("inference_address", "management_address", "metrics_address", "model_store",
            "grpc_inference_port", "grpc_management_port")
TOLERANCE = 1e-5
# KServe vs the TorchServe behind it: the same process answers both, so only JSON round trips differ.
KSERVE_TOLERANCE = 1e-4
TESTS = Path(__file__).resolve().parent


# -- the built layout -------------------------------------------------------------------------


def kserve_python(code: str, *args: str) -> Any:
    """Run ``code`` with the kserve venv's python in the repo root; return what it prints, as JSON."""
    if not KSERVE_PYTHON.is_file():
        pytest.fail(f"{KSERVE_PYTHON} missing: `make install` creates it (make test depends on it)")
    done = subprocess.run([str(KSERVE_PYTHON), "-c", code, *args], cwd=TESTS.parent, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


READ_LAYOUTS = """
import dataclasses, json, sys
from pathlib import Path
from deploy.kserve.backend import LayoutError, read_layout
out = []
for path in sys.argv[1:]:
    try:
        out.append(dataclasses.asdict(read_layout(Path(path))))
    except LayoutError as exc:
        out.append({"error": str(exc)})
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def layout(built: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return build(built["mar"], tmp_path_factory.mktemp("kserve-layout"))


def test_layout_holds_the_same_mar_and_one_config(layout: Dict[str, Path], built: Dict[str, Path]) -> None:
    root = layout["config"].parent.parent
    assert layout["config"] == root / "config" / "config.properties"
    assert [p.name for p in (root / "model-store").iterdir()] == [built["mar"].name]
    assert layout["mar"].stat().st_size == built["mar"].stat().st_size
    assert layout["mar"].read_bytes()[:4096] == built["mar"].read_bytes()[:4096]


def test_config_is_what_the_model_server_and_torchserve_need(layout: Dict[str, Path], built: Dict[str, Path],
                                                             tmp_path: Path) -> None:
    facts = mar_facts(built["mar"])
    root = layout["config"].parent.parent
    envelope_root = tmp_path / "envelope"
    build(built["mar"], envelope_root, envelope="kservev2")
    # What deploy.kserve.backend.read_layout (the server, in its own venv) takes from the layout.
    parsed, refused = kserve_python(READ_LAYOUTS, str(root), str(envelope_root))
    assert parsed["models"] == [facts["name"]]
    # The server takes :8080 and :8081; TorchServe listens on loopback :8085, management on the same listener.
    assert parsed["inference_url"] == parsed["management_url"] == "http://127.0.0.1:8085"
    assert parsed["model_store"] == str(root / "model-store")
    assert parsed["response_timeout_s"] == facts["model_config"]["responseTimeout"]
    # An envelope build answers in the envelope's shape, not the handler's: the server refuses it.
    assert "service_envelope" in refused["error"]
    values = read_properties(layout["config"])
    assert values["model_store"] == "/mnt/models/model-store"
    assert values["disable_token_authorization"] == "true"
    assert values["enable_envvars_config"] == "false"
    assert "service_envelope" not in values and "load_models" not in values
    assert values["metrics_mode"] == "prometheus"
    assert values["metrics_address"].startswith("http://0.0.0.0:")
    entry = json.loads(values["model_snapshot"])["models"][facts["name"]][facts["version"]]
    config = facts["model_config"]
    assert entry["marName"] == built["mar"].name
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == config[key], key
    # Inherited from the repo config, not copied; the server gives gRPC the same upload limit.
    repo = read_properties(Path(__file__).resolve().parent.parent / "config.properties")
    assert values["max_request_size"] == repo["max_request_size"] == str(parsed["max_request_bytes"])


@pytest.mark.parametrize("envelope", ["kserve", "kservev2"])
def test_envelope_build_pins_batch_size_one(envelope: str, built: Dict[str, Path]) -> None:
    values = kserve_properties(built["mar"], envelope=envelope)
    facts = mar_facts(built["mar"])
    assert values["service_envelope"] == envelope
    snapshot = json.loads(values["model_snapshot"])["models"][facts["name"]][facts["version"]]
    assert snapshot["batchSize"] == 1
    assert json.loads(values["models"]) == {facts["name"]: {facts["version"]: {"batchSize": 1}}}


def test_gpu_build_sets_gpus_and_workers(built: Dict[str, Path]) -> None:
    values = kserve_properties(built["mar"], gpus=2, workers_per_gpu=3)
    facts = mar_facts(built["mar"])
    entry = json.loads(values["model_snapshot"])["models"][facts["name"]][facts["version"]]
    assert values["number_of_gpu"] == "2"
    assert entry["minWorkers"] == entry["maxWorkers"] == 6
    assert "number_of_gpu" not in kserve_properties(built["mar"])  # default: every GPU the pod got
    with pytest.raises(ValueError):
        kserve_properties(built["mar"], envelope="seldon")


PROXY_TRANSLATION = """
import asyncio, json
import httpx
from google.protobuf.json_format import MessageToDict
from kserve import InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from deploy.kserve.proxy import TorchServeError, TorchServeModel, grpc_response, request_json

video = bytes(range(256)) * 3
tensor = pb.ModelInferRequest.InferInputTensor(name="video", datatype="BYTES", shape=[1],
                                               contents=pb.InferTensorContents(bytes_contents=[video]))
request = pb.ModelInferRequest(model_name="m", id="7", inputs=[tensor],
                               parameters={"topk": pb.InferParameter(int64_param=3)})
answer = {"model_name": "m", "id": "7", "outputs": [
    {"name": "labels", "datatype": "BYTES", "shape": [1, 1], "data": ["abseiling"]},
    {"name": "probabilities", "datatype": "FP32", "shape": [1, 1], "data": [0.5]},
    {"name": "indices", "datatype": "INT64", "shape": [1, 1], "data": [0]}]}

async def unreachable():
    async with httpx.AsyncClient() as client:
        try:
            await TorchServeModel("m", "http://127.0.0.1:9", client).predict({"instances": []})
        except TorchServeError as exc:
            return [exc.status, exc.body["reason"], exc.status_code.name]

print(json.dumps({"json": request_json(InferRequest.from_grpc(request)),
                  "grpc": MessageToDict(grpc_response(answer).to_grpc()),
                  "unreachable": asyncio.run(unreachable()),
                  "codes": {s: TorchServeError(s, {}).status_code.name for s in (400, 413, 422, 503, 500)}}))
"""


def test_proxy_translates_grpc_and_maps_errors() -> None:
    """deploy/kserve/proxy.py without TorchServe: gRPC raw bytes become the base64 JSON the handler
    reads, a v2 JSON answer becomes a ModelInferResponse, and failures keep a meaning."""
    out = kserve_python(PROXY_TRANSLATION)
    video = bytes(range(256)) * 3
    assert out["json"] == {"id": "7", "parameters": {"topk": 3}, "inputs": [
        {"name": "video", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(video).decode()]}]}
    outputs = {o["name"]: o for o in out["grpc"]["outputs"]}
    assert base64.b64decode(outputs["labels"]["contents"]["bytesContents"][0]) == b"abseiling"
    assert outputs["probabilities"]["contents"]["fp32Contents"] == [0.5]
    assert outputs["indices"]["contents"]["int64Contents"] == ["0"] and out["grpc"]["id"] == "7"
    assert out["unreachable"] == [503, "torchserve_unavailable", "UNAVAILABLE"]
    assert out["codes"] == {"400": "INVALID_ARGUMENT", "413": "RESOURCE_EXHAUSTED", "422": "INVALID_ARGUMENT",
                            "503": "UNAVAILABLE", "500": "INTERNAL"}


BODY_LIMIT = """
import asyncio, json
from fastapi import FastAPI, Request
from starlette.testclient import TestClient
from deploy.kserve.body_limit import BodyLimit

app = FastAPI()
reads = []

@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    reads.append(len(body))
    return {"bytes": len(body)}

app.add_middleware(BodyLimit, max_bytes=1000)
client = TestClient(app)
def chunks(n):  # no Content-Length: a chunked body
    for _ in range(n):
        yield b"x" * 100
out = {
    "under": [client.post("/echo", content=b"x" * 1000).status_code],
    "declared_over": client.post("/echo", content=b"x" * 1001),
    "chunked_over": client.post("/echo", content=chunks(50)),
    "chunked_under": client.post("/echo", content=chunks(5)).json(),
}
print(json.dumps({
    "under": out["under"], "chunked_under": out["chunked_under"], "reads": reads,
    "declared_over": [out["declared_over"].status_code, out["declared_over"].json()["reason"]],
    "chunked_over": [out["chunked_over"].status_code, out["chunked_over"].json()["reason"]],
}))
"""


def test_rest_bodies_over_torchserves_limit_are_refused_before_they_are_read() -> None:
    """deploy/kserve/body_limit.py: kserve reads a REST body whole before any model sees it; over
    TorchServe's max_request_size it is 413 from the Content-Length, or as a chunked body passes it."""
    out = kserve_python(BODY_LIMIT)
    assert out["under"] == [200] and out["chunked_under"] == {"bytes": 500}
    assert out["declared_over"] == [413, "request_too_large"]
    assert out["chunked_over"] == [413, "request_too_large"]
    assert out["reads"] == [1000, 500], "the refused bodies never reached the route"


# -- the manifests ------------------------------------------------------------------------------
# Schemas: tests/kserve_schemas.py, in the kserve venv (the kserve SDK's model classes for KServe's
# kinds, deserialised strictly; kubernetes-validate for the containers they embed). Here: what the
# schemas cannot know (the manifests agree with each other, the server and the built config).

RUNTIME_MANIFEST = MANIFEST_DIR / "servingruntime.yaml"
ISVC_MANIFESTS = sorted(MANIFEST_DIR.glob("inferenceservice-*.yaml"))
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hdfs://", "webhdfs://", "oci://")


def _quantity(value: Any) -> float:
    text = str(value)
    assert QUANTITY.match(text), f"not a Kubernetes quantity: {text!r}"
    factors = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    suffix = re.sub(r"^[0-9.]+", "", text)
    return float(text[: len(text) - len(suffix)]) * factors.get(suffix, 1)


def schema_problems(paths: List[Path]) -> Dict[str, List[str]]:
    if not KSERVE_PYTHON.is_file():
        pytest.fail(f"{KSERVE_PYTHON} missing: `make install` creates it (make test depends on it)")
    done = subprocess.run([str(KSERVE_PYTHON), str(TESTS / "kserve_schemas.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def built_values(built: Dict[str, Path]) -> Dict[str, Any]:
    values = kserve_properties(built["mar"])
    facts = mar_facts(built["mar"])
    entry = json.loads(values["model_snapshot"])["models"][facts["name"]][facts["version"]]
    return {"values": values, "entry": entry}


@pytest.fixture(scope="module")
def runtime() -> Dict[str, Any]:
    return yaml.safe_load(RUNTIME_MANIFEST.read_text())


def test_manifests_present() -> None:
    names = {p.name for p in MANIFEST_DIR.glob("*.yaml")}
    assert {"servingruntime.yaml", "inferenceservice-cpu-v1.yaml", "inferenceservice-cpu-v2.yaml",
            "inferenceservice-gpu-v1.yaml", "inferenceservice-gpu-v2.yaml"} <= names


def test_manifests_pass_the_schemas(tmp_path: Path) -> None:
    paths = sorted(MANIFEST_DIR.glob("*.yaml"))
    # The check can fail: a misspelt KServe field, a wrong core type and an unknown kind are each refused.
    broken = tmp_path / "broken.yaml"
    isvc = yaml.safe_load(ISVC_MANIFESTS[0].read_text())
    isvc["spec"]["predictor"]["minReplica"] = 1
    isvc["spec"]["predictor"]["model"]["ports"] = [{"containerPort": "8080"}]
    broken.write_text(yaml.safe_dump(isvc))
    wrong_kind = tmp_path / "wrong-kind.yaml"
    wrong_kind.write_text(yaml.safe_dump({**isvc, "kind": "InferenceServce"}))
    problems = schema_problems([*paths, broken, wrong_kind])
    assert {str(p): problems[str(p)] for p in paths} == {str(p): [] for p in paths}
    assert any("minReplica: unknown field" in p for p in problems[str(broken)]), problems[str(broken)]
    assert any("Kubernetes Container" in p and "'8080'" in p for p in problems[str(broken)]), problems[str(broken)]
    assert problems[str(wrong_kind)] and "unknown kind" in problems[str(wrong_kind)][0]


SERVER_ARGS = """
import json, sys
from deploy.kserve.server import parse_args
args = parse_args(sys.argv[1:])
print(json.dumps({k: str(v) for k, v in vars(args).items()}))
"""


def test_runtime_runs_our_server_on_its_ports(runtime: Dict[str, Any], built_values: Dict[str, Any]) -> None:
    assert runtime["kind"] == "ClusterServingRuntime" and runtime["metadata"]["name"] == "slowfast-serve"
    spec = runtime["spec"]
    assert set(spec["protocolVersions"]) == {"v1", "v2", "grpc-v2"}
    container = runtime_container()
    assert container["command"] == ["/opt/kserve-venv/bin/python", "-m", "deploy.kserve.server"]
    # The server's own parser reads the args (in its venv): the flags exist and mean what the ports say.
    args = kserve_python(SERVER_ARGS, *container["args"])
    assert args["model_dir"] == "/mnt/models" and args["torchserve"].endswith("/bin/torchserve")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": int(args["http_port"]), "h2c": int(args["grpc_port"])} == {"http1": 8080, "h2c": 8081}
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v2/health/ready", 8080)
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["image"].startswith("ghcr.io/OWNER/slowfast-serve:")
    # Scraping points at the port TorchServe's metrics API listens on in the built config.
    port = built_values["values"]["metrics_address"].rsplit(":", 1)[1]
    assert spec["annotations"]["prometheus.kserve.io/port"] == port
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"


def test_gpu_manifests_match_the_gpu_layout() -> None:
    # `make kserve-gpu` pins number_of_gpu; the GPU InferenceServices ask for that many GPUs.
    dry = subprocess.run(["make", "-n", "--no-print-directory", "kserve-gpu"], cwd=TESTS.parent,
                         capture_output=True, text=True, check=True).stdout
    # The layout's own command (the dry run also lists the export and archive when the build is stale).
    layout = next(line for line in dry.splitlines() if "deploy.kserve.build" in line)
    gpus = int(re.search(r"--gpus (\d+)", layout).group(1))
    output = re.search(r"--output (\S+)", layout).group(1)
    for path in ISVC_MANIFESTS:
        if "gpu" in path.stem.split("-"):
            model = yaml.safe_load(path.read_text())["spec"]["predictor"]["model"]
            assert model["resources"]["limits"]["nvidia.com/gpu"] == str(gpus), path.name
            assert model["storageUri"].endswith("-gpu") and output in path.read_text(), path.name


@pytest.mark.parametrize("path", ISVC_MANIFESTS, ids=lambda p: p.name)
def test_inference_service_uses_our_runtime(path: Path, built_values: Dict[str, Any],
                                            runtime: Dict[str, Any]) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1
    isvc = docs[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    name = isvc["metadata"]["name"]
    # Knative route names append suffixes: KServe refuses names over 45 characters.
    assert DNS_LABEL.match(name) and len(name) <= 45, name
    annotations = isvc["metadata"].get("annotations", {})
    assert all(isinstance(v, str) for v in annotations.values()), "annotation values must be strings"

    predictor = isvc["spec"]["predictor"]
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in SCALE_METRICS and isinstance(predictor["scaleTarget"], int)
    entry = built_values["entry"]
    # A pod takes what its workers batch at once before the autoscaler adds one.
    assert predictor["scaleTarget"] == entry["batchSize"] * entry["minWorkers"]
    assert predictor["timeout"] >= entry["responseTimeout"]

    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "slowfast-serve"
    formats = [{k: f[k] for k in ("name",)} for f in runtime["spec"]["supportedModelFormats"]]
    assert model["modelFormat"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["protocolVersion"] in path.stem.split("-")
    assert model["storageUri"].startswith(STORAGE_SCHEMES)
    resources = model["resources"]
    for key in ("cpu", "memory"):
        assert _quantity(resources["requests"][key]) <= _quantity(resources["limits"][key])
    gpus = resources["limits"].get("nvidia.com/gpu")
    if "gpu" in path.stem.split("-"):
        # Extended resources: whole numbers, and requests (if given) must equal limits.
        assert gpus is not None and str(gpus).isdigit() and int(gpus) >= 1
        assert resources["requests"].get("nvidia.com/gpu", gpus) == gpus
    else:
        assert gpus is None and "nvidia.com/gpu" not in resources["requests"]

    # Scraping points at the port TorchServe's metrics API listens on in the built config.
    if annotations.get("serving.kserve.io/enable-prometheus-scraping") == "true":
        port = built_values["values"]["metrics_address"].rsplit(":", 1)[1]
        assert annotations.get("prometheus.kserve.io/port", port) == port


# -- real servers -------------------------------------------------------------------------------


class PodTorchServe(LocalTorchServe):
    """LocalTorchServe running the KServe pod's config: token auth is off, so there is no key file."""

    @property
    def keys(self) -> Keys:
        return Keys(inference="", management="")


def start_pod_server(mar: Path, workdir: Path, envelope: Optional[str]) -> PodTorchServe:
    properties = {k: v for k, v in kserve_properties(mar, envelope=envelope).items() if k not in REMAPPED}
    return PodTorchServe(mar, workdir, properties=properties).start()


@pytest.fixture(scope="module")
def clips(shared_videos: Path) -> Dict[str, bytes]:
    return {name: (shared_videos / name).read_bytes() for name in CLIPS}


@pytest.fixture(scope="module")
def pod(built: Dict[str, Path], clips: Dict[str, bytes], tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[KServePod]:
    """The pod, rehearsed: the model server and its TorchServe, started as the runtime starts them."""
    # KServe's stock TorchServe runtime exported TS_SERVICE_ENVELOPE; with enable_envvars_config=false
    # TorchServe must ignore it and let the handler read v1/v2 itself.
    instance = KServePod(built["mar"], tmp_path_factory.mktemp("kserve-pod"), env={"TS_SERVICE_ENVELOPE": "kservev2"})
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def native(pod: KServePod) -> KServePod:
    """The TorchServe inside the pod, spoken to directly (its inference API on loopback)."""
    return pod


def post_plain(server: LocalTorchServe, video: bytes) -> requests.Response:
    # No Authorization header: exactly what the KServe wrapper sends.
    return requests.post(server.predictions_url, data=video,
                         headers={"Content-Type": "application/octet-stream"}, timeout=300)


def post_v1(server: LocalTorchServe, videos: List[bytes], parameters: Optional[dict] = None) -> requests.Response:
    body: Dict[str, Any] = {"instances": [{"data": base64.b64encode(v).decode()} for v in videos]}
    if parameters:
        body["parameters"] = parameters
    return requests.post(f"{server.inference_url}/v1/models/{server.model_name}:predict", json=body, timeout=300)


def post_v2(server: LocalTorchServe, videos: List[bytes], request_id: str = "req-1",
            datatype: str = "BYTES") -> requests.Response:
    body = {"id": request_id, "inputs": [{"name": "video", "shape": [len(videos)], "datatype": datatype,
                                          "data": [base64.b64encode(v).decode() for v in videos]}]}
    return requests.post(f"{server.inference_url}/v2/models/{server.model_name}/infer", json=body, timeout=300)


def probabilities(predictions: List[Dict[str, Any]]) -> Dict[int, float]:
    return {int(p["index"]): float(p["probability"]) for p in predictions}


def assert_same(actual: Dict[int, float], expected: Dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected)
    for index, value in expected.items():
        assert abs(actual[index] - value) <= TOLERANCE, (index, actual[index], value)


@pytest.fixture(scope="module")
def baseline(native: KServePod, clips: Dict[str, bytes]) -> Dict[str, Dict[int, float]]:
    """Plain raw-bytes answers, the reference for every protocol."""
    answers = {}
    for name, video in clips.items():
        reply = post_plain(native, video)
        assert reply.status_code == 200, reply.text
        answers[name] = probabilities(reply.json()["predictions"])
    return answers


def run_concurrently(calls: List[Callable[[], requests.Response]]) -> List[requests.Response]:
    results: List[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def worker(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # surfaced by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(isinstance(r, requests.Response) for r in results), results
    return results


@pytest.mark.integration
class TestTorchServeRoutes:
    """The pod's TorchServe, directly: the handler reads KServe JSON itself, dynamic batching on."""

    def test_ready_without_token_and_envelope_ignored(self, native: KServePod, built: Dict[str, Path]) -> None:
        # The wrapper's readiness check: GET <management>/models/<name>, no Authorization header.
        reply = requests.get(f"{native.management_url}/models/{native.model_name}?customized=false", timeout=30)
        assert reply.status_code == 200, reply.text
        model = reply.json()[0]
        assert model["batchSize"] == mar_facts(built["mar"])["model_config"]["batchSize"] > 1
        assert any(w["status"] == "READY" for w in model["workers"])

    def test_v1_matches_plain(self, native: KServePod, clips: Dict[str, bytes],
                              baseline: Dict[str, Dict[int, float]]) -> None:
        names = list(CLIPS[:2])
        reply = post_v1(native, [clips[n] for n in names])
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        assert len(predictions) == 2
        for name, result in zip(names, predictions):
            assert_same(probabilities(result["predictions"]), baseline[name])

    def test_v1_parameters_override_topk(self, native: KServePod, clips: Dict[str, bytes],
                                         baseline: Dict[str, Dict[int, float]]) -> None:
        reply = post_v1(native, [clips[CLIPS[0]]], parameters={"topk": 3})
        assert reply.status_code == 200, reply.text
        top = reply.json()["predictions"][0]["predictions"]
        assert len(top) == 3
        expected = dict(sorted(baseline[CLIPS[0]].items(), key=lambda kv: -kv[1])[:3])
        assert_same(probabilities(top), expected)

    def test_v2_outputs_shapes_and_values(self, native: KServePod, clips: Dict[str, bytes],
                                          baseline: Dict[str, Dict[int, float]]) -> None:
        names = list(CLIPS[:2])
        reply = post_v2(native, [clips[n] for n in names], request_id="oip-42")
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["id"] == "oip-42" and body["model_name"] == native.model_name
        outputs = {o["name"]: o for o in body["outputs"]}
        assert set(outputs) == {"labels", "probabilities", "indices"}
        assert (outputs["labels"]["datatype"], outputs["probabilities"]["datatype"],
                outputs["indices"]["datatype"]) == ("BYTES", "FP32", "INT64")
        k = len(baseline[names[0]])
        for output in outputs.values():
            assert output["shape"] == [2, k] and len(output["data"]) == 2 * k
        assert all(isinstance(x, str) for x in outputs["labels"]["data"])
        for row, name in enumerate(names):
            indices = outputs["indices"]["data"][row * k:(row + 1) * k]
            values = outputs["probabilities"]["data"][row * k:(row + 1) * k]
            assert_same(dict(zip(indices, values)), baseline[name])

    def test_concurrent_requests_batch_and_each_get_their_answer(
        self, native: KServePod, clips: Dict[str, bytes], baseline: Dict[str, Dict[int, float]]
    ) -> None:
        # One request occupies the worker; the rest queue and share the next batch (batchSize 4).
        plan = [("v1", CLIPS[0]), ("plain", CLIPS[1]), ("v2", CLIPS[2]), ("v1", CLIPS[1]), ("plain", CLIPS[2])]
        senders = {"v1": lambda v: post_v1(native, [v]), "v2": lambda v: post_v2(native, [v], request_id="c"),
                   "plain": lambda v: post_plain(native, v)}
        replies = run_concurrently([lambda kind=kind, name=name: senders[kind](clips[name]) for kind, name in plan])
        batch_sizes = []
        for (kind, name), reply in zip(plan, replies):
            assert reply.status_code == 200, (kind, reply.text)
            body = reply.json()
            if kind == "v2":
                outputs = {o["name"]: o for o in body["outputs"]}
                assert_same(dict(zip(outputs["indices"]["data"], outputs["probabilities"]["data"])), baseline[name])
                continue
            result = body["predictions"][0] if kind == "v1" else body
            assert_same(probabilities(result["predictions"]), baseline[name])
            batch_sizes.append(result["timings_ms"]["batch_size"])
        assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"

    def test_embedding_over_multipart_v1_and_v2(self, native: KServePod, clips: Dict[str, bytes], contract) -> None:
        # `curl -F data=@clip.mp4 -F output=embedding`: the README's line.
        multipart = requests.post(native.predictions_url, files={"data": ("clip.mp4", clips[CLIPS[0]])},
                                  data={"output": "embedding"}, timeout=300)
        assert multipart.status_code == 200, multipart.text
        plain = multipart.json()["embedding"]
        assert plain["dim"] == contract.embedding_size == len(plain["values"]) and "predictions" not in multipart.json()
        v1 = post_v1(native, [clips[CLIPS[0]], clips[CLIPS[1]]], {"output": "embedding"})
        assert v1.status_code == 200, v1.text
        instances = v1.json()["predictions"]
        assert len(instances) == 2 and instances[0]["embedding"]["values"] == pytest.approx(plain["values"], abs=1e-5)
        assert len(instances[1]["embedding"]["values"]) == contract.embedding_size
        body = {"id": "emb", "parameters": {"output": "both"},
                "inputs": [{"name": "video", "shape": [2], "datatype": "BYTES",
                            "data": [base64.b64encode(clips[n]).decode() for n in CLIPS[:2]]}]}
        v2 = requests.post(f"{native.inference_url}/v2/models/{native.model_name}/infer", json=body, timeout=300)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert {"labels", "probabilities", "indices", "embedding"} <= set(outputs)
        embedding = outputs["embedding"]
        assert embedding["datatype"] == "FP32" and embedding["shape"] == [2, contract.embedding_size]
        assert embedding["data"][:contract.embedding_size] == pytest.approx(plain["values"], abs=1e-5)

    def test_logits_over_a_header_and_v2(self, native: KServePod, clips: Dict[str, bytes],
                                         baseline: Dict[str, Dict[int, float]]) -> None:
        plain = requests.post(native.predictions_url, data=clips[CLIPS[0]], timeout=300,
                              headers={"Content-Type": "application/octet-stream", "output": "logits"})
        assert plain.status_code == 200, plain.text
        logits = plain.json()["logits"]
        assert logits["activation"] == "softmax" and "predictions" not in plain.json()
        # One view: the softmax of its logits is its labels answer.
        softmax = torch.softmax(torch.tensor(logits["values"]), 0)
        assert_same({index: float(softmax[index]) for index in baseline[CLIPS[0]]}, baseline[CLIPS[0]])
        body = {"id": "logits", "parameters": {"output": "logits"},
                "inputs": [{"name": "video", "shape": [2], "datatype": "BYTES",
                            "data": [base64.b64encode(clips[n]).decode() for n in CLIPS[:2]]}]}
        v2 = requests.post(f"{native.inference_url}/v2/models/{native.model_name}/infer", json=body, timeout=300)
        assert v2.status_code == 200, v2.text
        (tensor,) = v2.json()["outputs"]
        classes = len(logits["values"])
        assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("logits", "FP32", [2, classes])
        assert tensor["data"][:classes] == pytest.approx(logits["values"], abs=1e-5)

    @pytest.mark.parametrize(
        "send, reason",
        [
            (lambda s, v: post_v2(s, [v], datatype="FP32"), "bad_json"),
            (lambda s, v: requests.post(f"{s.inference_url}/v1/models/{s.model_name}:predict",
                                        json={"instances": [{"data": "not base64!"}]}, timeout=60), "bad_base64"),
            (lambda s, v: requests.post(f"{s.inference_url}/v1/models/{s.model_name}:predict",
                                        json={"instances": []}, timeout=60), "bad_json"),
            (lambda s, v: requests.post(f"{s.inference_url}/v2/models/{s.model_name}/infer",
                                        json={"inputs": []}, timeout=60), "bad_json"),
        ],
        ids=["v2-fp32", "v1-bad-base64", "v1-no-instances", "v2-no-inputs"],
    )
    def test_bad_input_is_4xx(self, native: KServePod, clips: Dict[str, bytes],
                              send: Callable[..., requests.Response], reason: str) -> None:
        reply = send(native, clips[CLIPS[0]])
        assert 400 <= reply.status_code < 500, reply.text
        assert reply.json()["reason"] == reason

    def test_metrics_in_prometheus_mode(self, native: KServePod) -> None:
        text = requests.get(f"{native.metrics_url}/metrics", timeout=10).text
        assert "# TYPE" in text and f'ModelName="{native.model_name}"' in text


# -- KServe's protocols, through the model server ------------------------------------------------

# Latencies (``timings_ms``, ``decode_ms``, ...): the only fields a second request may change.
def volatile(key: str) -> bool:
    return key == "timings_ms" or key.endswith("_ms")


def without_nulls(value: Any) -> Any:
    """kserve's InferenceResponse model writes absent optional fields as null: drop them."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def assert_close(actual: Any, expected: Any, where: str = "answer") -> None:
    """Same structure and values; floats within KSERVE_TOLERANCE; latency fields skipped."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r}"
        assert set(actual) == set(expected), (where, sorted(actual), sorted(expected))
        for key in (k for k in expected if not volatile(k)):
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (where, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert abs(actual - expected) <= KSERVE_TOLERANCE, (where, actual, expected)
    else:
        assert actual == expected, (where, actual, expected)


def v2_body(videos: List[bytes], parameters: Optional[dict] = None, request_id: str = "kserve-1") -> Dict[str, Any]:
    body: Dict[str, Any] = {"id": request_id, "inputs": [{"name": "video", "shape": [len(videos)], "datatype": "BYTES",
                                                          "data": [base64.b64encode(v).decode() for v in videos]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def v1_body(videos: List[bytes], parameters: Optional[dict] = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {"instances": [{"data": base64.b64encode(v).decode()} for v in videos]}
    if parameters:
        body["parameters"] = parameters
    return body


def grpc_call(pod: KServePod, videos: List[Path], parameters: Optional[dict] = None) -> Dict[str, Any]:
    """tests/kserve_grpc_client.py in the kserve venv (it has the v2 gRPC stubs): raw video bytes."""
    done = subprocess.run([str(KSERVE_PYTHON), str(TESTS / "kserve_grpc_client.py"), pod.grpc_target, pod.model_name,
                           *map(str, videos), "--parameters", json.dumps(parameters or {})],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def bad_clip() -> bytes:
    # Not a video: bytes no container format claims (seeded, so the message is the same every run).
    return bytes(random.Random(24).getrandbits(8) for _ in range(4096))


@pytest.mark.integration
class TestKServeProtocols:
    """The model server on the pod's ports: each answer is the answer of the TorchServe behind it."""

    def test_health_readiness_and_metadata(self, pod: KServePod, clips: Dict[str, bytes]) -> None:
        # Live at once; ready only once TorchServe had a READY worker (503 before that).
        assert pod.not_ready_seen, "readiness was never false while TorchServe loaded the model"
        assert requests.get(f"{pod.url}/v2/health/live", timeout=10).json() == {"live": True}
        assert requests.get(f"{pod.url}/v2/health/ready", timeout=10).json() == {"ready": True}
        assert requests.get(f"{pod.url}/v2/models/{pod.model_name}/ready", timeout=10).json()["ready"] is True
        assert requests.get(f"{pod.url}/v1/models/{pod.model_name}", timeout=10).json() == {
            "name": pod.model_name, "ready": True}
        assert requests.get(f"{pod.url}/v2/models/nosuch/ready", timeout=10).status_code == 404
        metadata = requests.get(f"{pod.url}/v2/models/{pod.model_name}", timeout=10).json()
        assert metadata["name"] == pod.model_name
        assert metadata["inputs"] == [{"name": "video", "datatype": "BYTES", "shape": [-1]}]
        # The outputs it declares are the tensors the handler renders: every output kind, seen for real.
        seen = set()
        for output in ("both", "logits"):
            reply = requests.post(f"{pod.inference_url}/v2/models/{pod.model_name}/infer", timeout=300,
                                  json=v2_body([clips[CLIPS[0]]], {"output": output}))
            assert reply.status_code == 200, reply.text
            seen |= {(o["name"], o["datatype"]) for o in reply.json()["outputs"]}
        assert {(o["name"], o["datatype"]) for o in metadata["outputs"]} == seen
        assert all(o["shape"] == [-1, -1] for o in metadata["outputs"])

    def test_v1_predict_is_torchserves_answer(self, pod: KServePod, clips: Dict[str, bytes],
                                              baseline: Dict[str, Dict[int, float]]) -> None:
        body = v1_body([clips[CLIPS[0]], clips[CLIPS[1]]], {"topk": 3})
        reply = requests.post(f"{pod.url}/v1/models/{pod.model_name}:predict", json=body, timeout=300)
        direct = requests.post(f"{pod.inference_url}/v1/models/{pod.model_name}:predict", json=body, timeout=300)
        assert reply.status_code == direct.status_code == 200, reply.text
        assert_close(reply.json(), direct.json())
        for name, result in zip(CLIPS[:2], reply.json()["predictions"]):
            top = dict(sorted(baseline[name].items(), key=lambda kv: -kv[1])[:3])
            assert_same(probabilities(result["predictions"]), top)

    def test_v2_infer_is_torchserves_answer(self, pod: KServePod, clips: Dict[str, bytes],
                                            baseline: Dict[str, Dict[int, float]]) -> None:
        body = v2_body([clips[CLIPS[0]], clips[CLIPS[2]]], {"output": "both", "topk": 5})
        reply = requests.post(f"{pod.url}/v2/models/{pod.model_name}/infer", json=body, timeout=300)
        direct = requests.post(f"{pod.inference_url}/v2/models/{pod.model_name}/infer", json=body, timeout=300)
        assert reply.status_code == direct.status_code == 200, reply.text
        assert_close(without_nulls(reply.json()), direct.json())
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        assert {"labels", "probabilities", "indices", "embedding"} == set(outputs)
        k = len(baseline[CLIPS[0]])
        for row, name in enumerate((CLIPS[0], CLIPS[2])):
            values = outputs["probabilities"]["data"][row * k:(row + 1) * k]
            assert_same(dict(zip(outputs["indices"]["data"][row * k:(row + 1) * k], values)), baseline[name])

    def test_grpc_v2_is_torchserves_answer(self, pod: KServePod, clips: Dict[str, bytes],
                                           shared_videos: Path) -> None:
        parameters = {"output": "both", "topk": 4}
        answer = grpc_call(pod, [shared_videos / CLIPS[1], shared_videos / CLIPS[0]], parameters)
        assert answer["server_ready"] is True and answer["model_ready"] is True
        rest_metadata = requests.get(f"{pod.url}/v2/models/{pod.model_name}", timeout=10).json()
        grpc_metadata = answer["metadata"]
        for tensors in (grpc_metadata["inputs"], grpc_metadata["outputs"]):
            for tensor in tensors:
                tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 fields read as strings in JSON
        assert (grpc_metadata["name"], grpc_metadata["inputs"], grpc_metadata["outputs"]) == (
            rest_metadata["name"], rest_metadata["inputs"], rest_metadata["outputs"])
        # The same videos as base64 over TorchServe's JSON route.
        direct = requests.post(f"{pod.inference_url}/v2/models/{pod.model_name}/infer", timeout=300,
                               json=v2_body([clips[CLIPS[1]], clips[CLIPS[0]]], parameters, request_id="grpc-1"))
        assert direct.status_code == 200, direct.text
        assert_close(answer["infer"], direct.json())

    def test_bad_clip_gets_torchserves_status_and_message(self, pod: KServePod, bad_clip: bytes,
                                                          tmp_path: Path) -> None:
        plain = requests.post(pod.predictions_url, data=bad_clip, timeout=60,
                              headers={"Content-Type": "application/octet-stream"})
        assert 400 <= plain.status_code < 500 and plain.json()["reason"], plain.text
        expected = plain.json()
        v1 = requests.post(f"{pod.url}/v1/models/{pod.model_name}:predict", json=v1_body([bad_clip]), timeout=60)
        v2 = requests.post(f"{pod.url}/v2/models/{pod.model_name}/infer", json=v2_body([bad_clip]), timeout=60)
        for reply in (v1, v2):
            assert (reply.status_code, reply.json()) == (plain.status_code, expected)
        path = tmp_path / "bad.mp4"
        path.write_bytes(bad_clip)
        error = grpc_call(pod, [path])["infer"]["error"]
        assert error["code"] == "INVALID_ARGUMENT" and json.loads(error["details"]) == expected
        # A request TorchServe's handler refuses before decoding: its 400 and reason, not kserve's 500.
        fp32 = {"inputs": [{"name": "video", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        reply = requests.post(f"{pod.url}/v2/models/{pod.model_name}/infer", json=fp32, timeout=60)
        assert reply.status_code == 400 and reply.json()["reason"] == "bad_json", reply.text


    def test_a_body_over_the_limit_is_refused_before_it_is_sent(self, pod: KServePod) -> None:
        # Only the headers go out: a Content-Length one byte over TorchServe's max_request_size.
        import http.client
        from urllib.parse import urlsplit

        limit = int(read_properties(pod.model_dir / "config" / "config.properties")["max_request_size"])
        where = urlsplit(pod.url)
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
        started = time.monotonic()
        connection.putrequest("POST", f"/v2/models/{pod.model_name}/infer")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(limit + 1))
        connection.endheaders()
        reply = connection.getresponse()
        assert reply.status == 413 and json.loads(reply.read())["reason"] == "request_too_large"
        assert time.monotonic() - started < 1.0
        connection.close()

    @pytest.mark.parametrize("protocol", ["kserve-v1", "kserve-v2"])
    def test_the_client_runs_a_folder_against_the_pod(self, pod: KServePod, shared_videos: Path, tmp_path: Path,
                                                      baseline: Dict[str, Dict[int, float]], protocol: str) -> None:
        """`python -m client` against the InferenceService's URL (issue 24, point 3): a folder with
        embeddings, a cluster header, then --resume; each answer is the TorchServe answer behind it."""
        folder = tmp_path / "videos"
        folder.mkdir()
        for name in CLIPS[:2]:
            (folder / name).symlink_to(shared_videos / name)
        out = tmp_path / "results.jsonl"
        command = [sys.executable, "-m", "client", str(folder), "--protocol", protocol, "--url", pod.url,
                   "--model", pod.model_name, "--output", "both", "--header", "X-Cluster-Auth: team-a",
                   "--out", str(out)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        lines = {Path(line["path"]).name: line for line in map(json.loads, out.read_text().splitlines())}
        assert sorted(lines) == sorted(CLIPS[:2])
        for name, line in lines.items():
            assert line["status"] == "ok", line
            assert_same(probabilities(line["answer"]["predictions"]), baseline[name])
            assert len(line["answer"]["embedding"]["values"]) > 0
        again = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert len(out.read_text().splitlines()) == 2, "--resume sent nothing already answered"


# -- stock envelopes (TorchServe's own kserve / kservev2), batchSize pinned to 1 -------------------


@pytest.fixture
def envelope_server(request: pytest.FixtureRequest, built: Dict[str, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodTorchServe]:
    server = start_pod_server(built["mar"], tmp_path_factory.mktemp(f"ts-{request.param}"), request.param)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("envelope_server", ["kserve"], indirect=True)
def test_stock_kserve_v1_envelope(envelope_server: PodTorchServe, clips: Dict[str, bytes],
                                  baseline: Dict[str, Dict[int, float]]) -> None:
    assert envelope_server.describe()["batchSize"] == 1
    names = list(CLIPS[:2])
    reply = post_v1(envelope_server, [clips[n] for n in names])
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert len(predictions) == 2
    for name, result in zip(names, predictions):
        assert_same(probabilities(result["predictions"]), baseline[name])
    # Concurrent requests: batchSize 1 keeps the envelope from answering only the first of a batch.
    replies = run_concurrently([lambda n=n: post_v1(envelope_server, [clips[n]]) for n in CLIPS])
    for name, reply in zip(CLIPS, replies):
        assert reply.status_code == 200, reply.text
        assert_same(probabilities(reply.json()["predictions"][0]["predictions"]), baseline[name])


def _envelope_v2_result(output: Dict[str, Any]) -> Dict[str, Any]:
    """The handler's result inside the kservev2 envelope's one BYTES output (a JSON string once the
    handler renders KSERVE_V2_TENSOR rows as strings; the JSON object itself before that)."""
    assert output["datatype"] == "BYTES" and list(output["shape"]) == [1] and len(output["data"]) == 1
    item = output["data"][0]
    return json.loads(item) if isinstance(item, str) else item


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("envelope_server", ["kservev2"], indirect=True)
def test_stock_kservev2_envelope(envelope_server: PodTorchServe, clips: Dict[str, bytes],
                                 baseline: Dict[str, Dict[int, float]]) -> None:
    assert envelope_server.describe()["batchSize"] == 1
    replies = run_concurrently(
        [lambda i=i, n=n: post_v2(envelope_server, [clips[n]], request_id=f"id-{i}") for i, n in enumerate(CLIPS)]
    )
    for i, (name, reply) in enumerate(zip(CLIPS, replies)):
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["id"] == f"id-{i}" and body["model_name"] == envelope_server.model_name
        assert [o["name"] for o in body["outputs"]] == ["video"]  # named after the input, by the envelope
        assert_same(probabilities(_envelope_v2_result(body["outputs"][0])["predictions"]), baseline[name])
    reply = post_v2(envelope_server, [clips[CLIPS[0]]], datatype="FP32")
    assert reply.status_code == 400
    assert _envelope_v2_result(reply.json()["outputs"][0])["reason"] == "bad_json"


# -- last: stopping the pod ----------------------------------------------------------------------


@pytest.mark.integration
def test_stopping_the_server_stops_torchserve(pod: KServePod) -> None:
    """SIGTERM (what the kubelet sends) ends the server cleanly and TorchServe with it. Runs last."""
    java = pod.torchserve_pid()
    assert java is not None and pod.torchserve_running(java)
    assert pod.stop() == 0, pod.tail_log()
    assert not pod.torchserve_running(java)
