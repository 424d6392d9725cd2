"""One kserve ``Model`` per TorchServe registration: KServe's protocols in, TorchServe's KServe routes out.

TorchServe's inference API serves ``/v1/models/<name>:predict`` and ``/v2/models/<name>/infer`` and
hands the JSON body to our handler, which parses KServe v1 and v2 itself (``handler/protocol.py``)
and renders the answer in the same protocol (``handler/render.py``). So this proxy translates
nothing it does not have to:

- REST v1: the decoded body goes to ``/v1/models/<name>:predict``; TorchServe's JSON comes back as is;
- REST v2: the request goes to ``/v2/models/<name>/infer`` (BYTES elements are the base64 strings
  the client sent); TorchServe's JSON comes back as is;
- gRPC v2: BYTES elements arrive as raw bytes (``bytes_contents`` or ``raw_input_contents``), so
  they are base64-encoded for the JSON route, and the JSON answer becomes a ``ModelInferResponse``.

Dynamic batching stays TorchServe's: each forwarded request is one TorchServe request. An answer
TorchServe refuses (4xx/5xx) raises ``TorchServeError``: REST gets the same status and JSON body,
gRPC the matching status code with that JSON as its details.

Runs in the kserve virtualenv: nothing here imports torch, torchserve or av.
"""

from __future__ import annotations

import base64
import json
from http import HTTPStatus
from typing import Any, Dict, List, Mapping, Optional, Union

import httpx
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException

from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model
from kserve.protocol.infer_type import deserialize_bytes_tensor, to_http_parameters

# What a request may hold and an answer holds (handler/protocol.py reads the input; handler/render.py
# writes the outputs; tests/test_kserve.py checks that these agree with it). -1: any size.
INPUT_TENSORS = [{"name": "video", "datatype": "BYTES", "shape": [-1]}]
OUTPUT_TENSORS = [
    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
    {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "indices", "datatype": "INT64", "shape": [-1, -1]},
    {"name": "embedding", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "logits", "datatype": "FP32", "shape": [-1, -1]},
]

JSON = {"Content-Type": "application/json"}
# TorchServe's HTTP status -> the gRPC code that means the same (grpc's own HTTP mapping, inverted).
GRPC_CODES = {
    400: StatusCode.INVALID_ARGUMENT, 404: StatusCode.NOT_FOUND, 408: StatusCode.DEADLINE_EXCEEDED,
    413: StatusCode.RESOURCE_EXHAUSTED, 415: StatusCode.INVALID_ARGUMENT, 422: StatusCode.INVALID_ARGUMENT, 429: StatusCode.RESOURCE_EXHAUSTED,
    503: StatusCode.UNAVAILABLE, 504: StatusCode.DEADLINE_EXCEEDED, 507: StatusCode.RESOURCE_EXHAUSTED,
}


class TorchServeError(GrpcException):
    """TorchServe answered ``status`` with ``body``: passed on unchanged (REST) or as its gRPC code."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        code = GRPC_CODES.get(status, StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else StatusCode.INTERNAL)
        super().__init__(status_code=code, details=json.dumps(body) if not isinstance(body, str) else body)


async def torchserve_error_response(_: Request, exc: TorchServeError) -> JSONResponse:
    """REST: the client sees TorchServe's status and JSON, not kserve's default 500."""
    return JSONResponse(status_code=exc.status, content=exc.body)


def error_body(status: int, reason: str, message: str) -> Dict[str, Any]:
    """An error in the handler's own shape (handler/errors.py ``RequestError.to_body``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"code": status, "type": phrase, "reason": reason, "message": message}


def _reply_body(reply: httpx.Response) -> Any:
    try:
        return reply.json()
    except ValueError:  # TorchServe's frontend answered itself, not the handler
        return error_body(reply.status_code, "torchserve", reply.text)


def _b64(item: Union[bytes, str]) -> str:
    # REST v2 elements are strings: by this project's protocol, already the base64 of the video.
    return base64.b64encode(item).decode("ascii") if isinstance(item, (bytes, bytearray)) else item


def tensor_json(tensor: InferInput) -> Dict[str, Any]:
    """One v2 input as the JSON TorchServe's route takes; bytes elements as base64 strings."""
    raw = getattr(tensor, "_raw_data", None)  # gRPC raw_input_contents / REST binary extension
    if raw is not None and tensor.datatype == "BYTES":
        data: List[Any] = [_b64(bytes(item)) for item in deserialize_bytes_tensor(raw)]
    else:
        data = [_b64(item) if isinstance(item, (bytes, bytearray)) else item for item in (tensor.data or [])]
    body: Dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype, "data": data}
    if tensor.parameters:
        body["parameters"] = to_http_parameters(tensor.parameters)
    return body


def request_json(request: InferRequest) -> Dict[str, Any]:
    """A v2 ``InferRequest`` (REST or gRPC) as the Open Inference Protocol JSON body."""
    body: Dict[str, Any] = {"inputs": [tensor_json(t) for t in request.inputs]}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = to_http_parameters(request.parameters)
    return body


def grpc_response(answer: Mapping[str, Any]) -> InferResponse:
    """TorchServe's v2 JSON answer as an ``InferResponse`` that kserve turns into ``ModelInferResponse``."""
    outputs = [InferOutput(name=o["name"], shape=list(o["shape"]), datatype=o["datatype"], data=list(o["data"]))
               for o in answer["outputs"]]
    return InferResponse(response_id=answer.get("id") or "", model_name=answer["model_name"], infer_outputs=outputs,
                         parameters=answer.get("parameters"))


class TorchServeModel(Model):
    """A kserve model that forwards to one TorchServe registration on loopback.

    ``ready`` stays False until ``deploy.kserve.server`` has seen TorchServe report a READY worker.
    """

    def __init__(self, name: str, inference_url: str, client: httpx.AsyncClient) -> None:
        super().__init__(name)
        self.inference_url = inference_url
        self.client = client
        self.ready = False

    def load(self) -> bool:
        # kserve calls load() on a request to a model that is not ready: readiness is TorchServe's to give.
        return self.ready

    def start(self) -> None:
        # kserve's default marks the model ready at registration; ours waits for TorchServe.
        return None

    def get_input_types(self) -> List[Dict[str, Any]]:
        return [dict(t) for t in INPUT_TENSORS]

    def get_output_types(self) -> List[Dict[str, Any]]:
        return [dict(t) for t in OUTPUT_TENSORS]

    async def _post(self, route: str, **body: Any) -> Any:
        try:
            reply = await self.client.post(f"{self.inference_url}/{route}", **body)
        except httpx.TimeoutException:
            raise TorchServeError(504, error_body(504, "torchserve_timeout", "TorchServe did not answer in time")) from None
        except httpx.TransportError as exc:
            raise TorchServeError(503, error_body(503, "torchserve_unavailable", f"TorchServe unreachable: {exc}")) from None
        if reply.status_code != 200:
            raise TorchServeError(reply.status_code, _reply_body(reply))
        return orjson.loads(reply.content)

    async def predict(self, payload: Union[Dict, InferRequest], headers: Optional[Dict[str, str]] = None,
                      response_headers: Optional[Dict[str, str]] = None) -> Union[Dict, InferResponse]:
        if isinstance(payload, InferRequest):
            answer = await self._post(f"v2/models/{self.name}/infer", content=orjson.dumps(request_json(payload)),
                                      headers=JSON)
            # REST: kserve validates the dict as an InferenceResponse and sends it unchanged.
            return grpc_response(answer) if payload.from_grpc else answer
        if isinstance(payload, (bytes, bytearray)):
            # kserve leaves a non-JSON body undecoded: TorchServe answers it as it would on /predictions.
            return await self._post(f"v1/models/{self.name}:predict", content=bytes(payload),
                                    headers={"Content-Type": "application/octet-stream"})
        return await self._post(f"v1/models/{self.name}:predict", content=orjson.dumps(payload), headers=JSON)
