"""KServe: the built layout, the InferenceService manifests, and real TorchServe runs in each protocol.

Three servers at most, all on 127.0.0.1 with free ports, each from the KServe config.properties that
``deploy.kserve.build`` writes (addresses and paths remapped, nothing else):
- native (default run): no envelope, batching on, token auth off as in the pod, and
  ``TS_SERVICE_ENVELOPE=kservev2`` in the environment as KServe's runtime sets it — it must be ignored;
- ``kserve`` and ``kservev2`` stock envelopes (slow): batchSize pinned to 1.
Answers are compared with the plain raw-bytes answer for the same clip, probabilities within 1e-5.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import pytest
import requests
import torch
import yaml

from client.keys import Keys
from client.config import read_properties
from harness.torchserve import LocalTorchServe
from deploy.kserve.build import build, kserve_properties, mar_facts

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kserve"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))
CLIPS = ("ii__realshort.mp4", "dc__video_90.mov", "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi")
# What LocalTorchServe must own to run beside other servers; everything else comes from the build.
REMAPPED = ("inference_address", "management_address", "metrics_address", "model_store",
            "grpc_inference_port", "grpc_management_port")
TOLERANCE = 1e-5


# -- the built layout -------------------------------------------------------------------------


def wrapper_parse(config_text: str) -> Dict[str, Any]:
    """What pytorch/serve's kserve_wrapper ``parse_config`` takes from config.properties.

    It splits every non-comment line at the first '=', reads model names from ``model_snapshot``
    (falling back to a model called "model") and forwards to ``inference_address``.
    """
    values: Dict[str, str] = {}
    for line in config_text.splitlines():
        if not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    snapshot = json.loads(values.get("model_snapshot", "{}"))
    return {
        "model_names": list(snapshot.get("models", {}).keys()) or ["model"],
        "inference_address": values.get("inference_address"),
        "management_address": values.get("management_address"),
        "model_store": values.get("model_store"),
        "values": values,
    }


@pytest.fixture(scope="module")
def layout(built: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return build(built["mar"], tmp_path_factory.mktemp("kserve-layout"))


def test_layout_holds_the_same_mar_and_one_config(layout: Dict[str, Path], built: Dict[str, Path]) -> None:
    root = layout["config"].parent.parent
    assert layout["config"] == root / "config" / "config.properties"
    assert [p.name for p in (root / "model-store").iterdir()] == [built["mar"].name]
    assert layout["mar"].stat().st_size == built["mar"].stat().st_size
    assert layout["mar"].read_bytes()[:4096] == built["mar"].read_bytes()[:4096]


def test_config_is_what_the_kserve_wrapper_and_torchserve_need(layout: Dict[str, Path], built: Dict[str, Path]) -> None:
    text = layout["config"].read_text()
    parsed = wrapper_parse(text)
    facts = mar_facts(built["mar"])
    # The wrapper serves /v1/models/<name> for each snapshot model and forwards to port 8085.
    assert parsed["model_names"] == [facts["name"]]
    assert parsed["inference_address"] == "http://127.0.0.1:8085"
    # Its gRPC server owns :8081, so management shares the inference listener (readiness check).
    assert parsed["management_address"] == parsed["inference_address"]
    assert parsed["model_store"] == "/mnt/models/model-store"
    values = parsed["values"]
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
    # Inherited from the repo config, not copied.
    repo = read_properties(Path(__file__).resolve().parent.parent / "config.properties")
    assert values["max_request_size"] == repo["max_request_size"]


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


# -- the manifests ------------------------------------------------------------------------------
# No PyPI tool validates KServe CRDs offline: kubernetes-validate ships core Kubernetes schemas only,
# and the kserve SDK (whose generated models list the CRD's fields) pulls ~55 packages into the venv.
# So: a structural check. The allowed keys are those of kserve SDK 0.21's V1beta1* models.

ISVC_KEYS = {"apiVersion", "kind", "metadata", "spec"}
SPEC_KEYS = {"predictor", "transformer", "explainer"}
PREDICTOR_KEYS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget", "containerConcurrency",
                  "timeout", "canaryTrafficPercent", "model", "nodeSelector", "tolerations", "affinity",
                  "serviceAccountName", "annotations", "labels", "logger", "batcher", "autoScaling"}
MODEL_KEYS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "resources", "env",
              "args", "ports", "readinessProbe", "livenessProbe", "startupProbe"}
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


def _unknown(mapping: Mapping[str, Any], allowed: set) -> List[str]:
    return sorted(set(mapping) - allowed)


@pytest.fixture(scope="module")
def built_values(built: Dict[str, Path]) -> Dict[str, Any]:
    values = kserve_properties(built["mar"])
    facts = mar_facts(built["mar"])
    entry = json.loads(values["model_snapshot"])["models"][facts["name"]][facts["version"]]
    return {"values": values, "entry": entry}


def test_manifests_present() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"inferenceservice-cpu-v1.yaml", "inferenceservice-cpu-v2.yaml",
            "inferenceservice-gpu-v1.yaml", "inferenceservice-gpu-v2.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_a_valid_inference_service(path: Path, built_values: Dict[str, Any]) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1
    isvc = docs[0]
    assert not _unknown(isvc, ISVC_KEYS)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    name = isvc["metadata"]["name"]
    # Knative route names append suffixes: KServe refuses names over 45 characters.
    assert DNS_LABEL.match(name) and len(name) <= 45, name
    annotations = isvc["metadata"].get("annotations", {})
    assert all(isinstance(v, str) for v in annotations.values()), "annotation values must be strings"

    spec = isvc["spec"]
    assert not _unknown(spec, SPEC_KEYS) and "predictor" in spec
    predictor = spec["predictor"]
    assert not _unknown(predictor, PREDICTOR_KEYS)
    assert isinstance(predictor["minReplicas"], int) and isinstance(predictor["maxReplicas"], int)
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in SCALE_METRICS and isinstance(predictor["scaleTarget"], int)
    entry = built_values["entry"]
    # A pod takes what its workers batch at once before the autoscaler adds one.
    assert predictor["scaleTarget"] == entry["batchSize"] * entry["minWorkers"]
    assert predictor["timeout"] >= entry["responseTimeout"]

    model = predictor["model"]
    assert not _unknown(model, MODEL_KEYS)
    assert model["modelFormat"] == {"name": "pytorch"}
    assert model["runtime"] == "kserve-torchserve"
    assert model["protocolVersion"] in ("v1", "v2")
    assert model["protocolVersion"] in path.stem.split("-")
    assert model["storageUri"].startswith(STORAGE_SCHEMES)
    resources = model["resources"]
    assert not _unknown(resources, {"requests", "limits"})
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
def native(built: Dict[str, Path], clips: Dict[str, bytes], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[PodTorchServe]:
    # The kserve-torchserve runtime exports TS_SERVICE_ENVELOPE; with enable_envvars_config=false
    # TorchServe must ignore it and let the handler read v1/v2 itself.
    mp = pytest.MonkeyPatch()
    mp.setenv("TS_SERVICE_ENVELOPE", "kservev2")
    try:
        server = start_pod_server(built["mar"], tmp_path_factory.mktemp("ts-kserve-native"), None)
    finally:
        mp.undo()
    try:
        yield server
    finally:
        server.stop()


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
def baseline(native: PodTorchServe, clips: Dict[str, bytes]) -> Dict[str, Dict[int, float]]:
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
class TestNative:
    """The pod's config as built: handler reads KServe JSON itself, dynamic batching on."""

    def test_ready_without_token_and_envelope_ignored(self, native: PodTorchServe, built: Dict[str, Path]) -> None:
        # The wrapper's readiness check: GET <management>/models/<name>, no Authorization header.
        reply = requests.get(f"{native.management_url}/models/{native.model_name}?customized=false", timeout=30)
        assert reply.status_code == 200, reply.text
        model = reply.json()[0]
        assert model["batchSize"] == mar_facts(built["mar"])["model_config"]["batchSize"] > 1
        assert any(w["status"] == "READY" for w in model["workers"])

    def test_v1_matches_plain(self, native: PodTorchServe, clips: Dict[str, bytes],
                              baseline: Dict[str, Dict[int, float]]) -> None:
        names = list(CLIPS[:2])
        reply = post_v1(native, [clips[n] for n in names])
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        assert len(predictions) == 2
        for name, result in zip(names, predictions):
            assert_same(probabilities(result["predictions"]), baseline[name])

    def test_v1_parameters_override_topk(self, native: PodTorchServe, clips: Dict[str, bytes],
                                         baseline: Dict[str, Dict[int, float]]) -> None:
        reply = post_v1(native, [clips[CLIPS[0]]], parameters={"topk": 3})
        assert reply.status_code == 200, reply.text
        top = reply.json()["predictions"][0]["predictions"]
        assert len(top) == 3
        expected = dict(sorted(baseline[CLIPS[0]].items(), key=lambda kv: -kv[1])[:3])
        assert_same(probabilities(top), expected)

    def test_v2_outputs_shapes_and_values(self, native: PodTorchServe, clips: Dict[str, bytes],
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
        self, native: PodTorchServe, clips: Dict[str, bytes], baseline: Dict[str, Dict[int, float]]
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

    def test_embedding_over_multipart_v1_and_v2(self, native: PodTorchServe, clips: Dict[str, bytes], contract) -> None:
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

    def test_logits_over_a_header_and_v2(self, native: PodTorchServe, clips: Dict[str, bytes],
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
    def test_bad_input_is_4xx(self, native: PodTorchServe, clips: Dict[str, bytes],
                              send: Callable[..., requests.Response], reason: str) -> None:
        reply = send(native, clips[CLIPS[0]])
        assert 400 <= reply.status_code < 500, reply.text
        assert reply.json()["reason"] == reason

    def test_metrics_in_prometheus_mode(self, native: PodTorchServe) -> None:
        text = requests.get(f"{native.metrics_url}/metrics", timeout=10).text
        assert "# TYPE" in text and f'ModelName="{native.model_name}"' in text


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
