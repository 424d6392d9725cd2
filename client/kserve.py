"""KServe's REST protocols on the client side: where a request goes, its JSON envelope, and its
answer read back as the answer TorchServe's ``/predictions`` gives, so results lines, tables and
live windows are the same whatever protocol the server speaks.

The interface (used by client/transport.py, nothing else): ``codec(protocol)`` -> a ``KServeCodec``
with ``url(address, model)``, ``encode(video, fields) -> (body, headers)`` and ``decode(answer,
fields) -> dict``; ``decode`` raises ``ValueError`` for an answer it cannot read.

v1 (``POST <address>/v1/models/<model>:predict``): ``{"instances": [{"data": "<base64 video>",
<option>: value...}], "parameters": {<option>: value...}}`` -- the options both ways, since our
handler reads ``parameters`` and TorchServe's stock ``kserve`` envelope hands it each instance
alone (handler/protocol.py). The answer ``{"predictions": [<one /predictions answer>]}``.

v2 / Open Inference Protocol (``POST <address>/v2/models/<model>/infer``): one BYTES input holding
the base64 video, options as ``parameters``. The answer's output tensors (handler/render.py) become
the /predictions keys: ``labels``/``probabilities``/``indices`` [1, k] -> ``predictions``,
``embedding`` [1, dim] -> ``embedding``, ``logits`` [1, classes] -> ``logits``; ``model_name`` ->
``model``. A v2 answer carries nothing else (no ``windows``, ``weights``, timings or video facts).
TorchServe's stock ``kservev2`` envelope answers one BYTES tensor holding the whole answer as JSON:
read as that answer.

Timelines stream only over ``/predictions``: KServe answers a request in one piece.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple
from urllib.parse import urlparse

from handler.option_table import request_option

TORCHSERVE = "torchserve"
KSERVE_V1 = "kserve-v1"
KSERVE_V2 = "kserve-v2"
PROTOCOLS = (TORCHSERVE, KSERVE_V1, KSERVE_V2)
INPUT_NAME = "video"
# The v2 tensors of one output kind each (handler/render.py's OutputKind.tensors).
LABEL_TENSORS = ("labels", "probabilities", "indices")
VECTOR_TENSORS = ("embedding", "logits")

_JSON_TYPES = {"int": int, "float": float, "seconds": float}


def json_value(name: str, text: str) -> Any:
    """An option's text (as the TorchServe protocol sends it in a header) as its JSON value."""
    try:
        option = request_option(name)
    except StopIteration:
        return text
    if option.value_type == "bool":
        return text.strip().lower() in ("true", "1", "yes", "on")
    if option.value_type == "choice":
        return type(option.choices[0])(text)
    convert = _JSON_TYPES.get(option.value_type)
    return convert(text) if convert else text


def _first_row(tensor: Mapping[str, Any]) -> List[Any]:
    """The first row of a [1, N] tensor (a KServe request here holds one video)."""
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ValueError(f"output {tensor.get('name')!r} has no data list")
    shape = tensor.get("shape") or [1, len(data)]
    width = int(shape[-1]) if len(shape) > 1 else len(data)
    return data[:width]


@dataclass(frozen=True)
class KServeCodec:
    """One KServe REST protocol version (``v1`` or ``v2``)."""

    version: str

    def url(self, address: str, model: str) -> str:
        """``http://host[:port][/prefix]`` -> the model's predict/infer URL; a URL already naming a
        ``/v1/models/`` or ``/v2/models/`` route is kept."""
        base = address.rstrip("/")
        if f"/{self.version}/models/" in urlparse(address).path:
            return base
        route = f"/v1/models/{model}:predict" if self.version == "v1" else f"/v2/models/{model}/infer"
        return base + route

    def encode(self, video: bytes, fields: Mapping[str, str]) -> Tuple[bytes, Dict[str, str]]:
        """The request body (JSON) for one video with these options, and its Content-Type."""
        data = base64.b64encode(video).decode("ascii")
        options = {name: json_value(name, value) for name, value in fields.items()}
        if self.version == "v1":
            body: Dict[str, Any] = {"instances": [{"data": data, **options}]}
        else:
            body = {"inputs": [{"name": INPUT_NAME, "shape": [1], "datatype": "BYTES", "data": [data]}]}
        if options:
            body["parameters"] = options
        return json.dumps(body).encode("utf-8"), {"Content-Type": "application/json"}

    def decode(self, answer: Any, fields: Mapping[str, str]) -> Dict[str, Any]:
        """The KServe answer to one video sent with ``fields`` as TorchServe's ``/predictions`` answer.
        Raises:
            ValueError: not an answer of this protocol.
        """
        if not isinstance(answer, Mapping):
            raise ValueError("the answer is not a JSON object")
        if self.version == "v1":
            predictions = answer.get("predictions")
            if not isinstance(predictions, list) or len(predictions) != 1 or not isinstance(predictions[0], Mapping):
                raise ValueError("a KServe v1 answer holds 'predictions': [one answer per instance]")
            return dict(predictions[0])
        return self._decode_v2(answer, fields)

    @staticmethod
    def _decode_v2(answer: Mapping[str, Any], fields: Mapping[str, str]) -> Dict[str, Any]:
        outputs = answer.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise ValueError("a KServe v2 answer holds an 'outputs' list of tensors")
        tensors = {str(o.get("name")): o for o in outputs}
        if len(outputs) == 1 and not set(tensors) & {*LABEL_TENSORS, *VECTOR_TENSORS}:
            # TorchServe's stock kservev2 envelope: the handler's whole answer as one BYTES element.
            row = _first_row(outputs[0])
            whole = json.loads(row[0]) if row and isinstance(row[0], str) else (row[0] if row else None)
            if not isinstance(whole, Mapping):
                raise ValueError(f"the v2 output {outputs[0].get('name')!r} is not an answer")
            return dict(whole)
        result: Dict[str, Any] = {}
        if set(LABEL_TENSORS) <= set(tensors):
            rows = [_first_row(tensors[name]) for name in LABEL_TENSORS]
            # Index -1 pads a row that a threshold left shorter (handler/render.py's NO_LABEL).
            result["predictions"] = [{"label": label, "index": int(index), "probability": float(probability)}
                                     for label, probability, index in zip(*rows) if int(index) >= 0]
        if "embedding" in tensors:
            values = [float(v) for v in _first_row(tensors["embedding"])]
            normalized = json_value("normalize", fields.get("normalize", "false"))
            result["embedding"] = {"model": answer.get("model_name", ""), "dim": len(values),
                                   "normalized": normalized, "values": values}
        if "logits" in tensors:
            result["logits"] = {"values": [float(v) for v in _first_row(tensors["logits"])]}
        if not result:
            raise ValueError(f"the v2 answer has none of the outputs {LABEL_TENSORS + VECTOR_TENSORS}: {sorted(tensors)}")
        result["model"] = answer.get("model_name", "")
        return result


def codec(protocol: str) -> KServeCodec:
    """The codec of ``kserve-v1`` or ``kserve-v2``.
    Raises:
        ValueError: another protocol (TorchServe's needs none: the raw video, options as headers).
    """
    if protocol not in (KSERVE_V1, KSERVE_V2):
        raise ValueError(f"not a KServe protocol: {protocol!r}")
    return KServeCodec(protocol.rsplit("-", 1)[1])
