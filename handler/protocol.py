"""Parsing: one TorchServe request row -> its video bytes and raw option values (the first stage).

Shapes understood:
- raw body (``curl --data-binary @clip.mp4 -H 'Content-Type: application/octet-stream'``, ``curl -T``);
- multipart upload, video in field ``data`` (or ``video``/``file``), options as other fields;
- KServe v1 JSON ``{"instances": [{"data": "<base64>"}, ...], "parameters": {...}}``;
- KServe v2 / Open Inference Protocol JSON ``{"inputs": [{"datatype": "BYTES", "data": ["<base64>"]}]}``;
- rows already unwrapped by TorchServe's stock ``kserve``/``kservev2`` envelopes.
Options may also come as request headers (``topk: 10`` or ``X-Topk: 10``): TorchServe gives
handlers no query string. ``ParsedRequest.protocol`` names the shape, so that ``render.reply``
answers in the same one.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from handler.errors import RequestError
from handler.option_table import REQUEST_OPTIONS, REQUEST_OPTION_NAMES

PLAIN = "plain"
KSERVE_V1 = "kserve_v1"
KSERVE_V2 = "kserve_v2"
# One OIP tensor that TorchServe's stock kservev2 envelope already unwrapped (it builds the response).
KSERVE_V2_TENSOR = "kserve_v2_tensor"

VIDEO_FIELDS = ("data", "body", "video", "file")
CURL_HINT = (
    "send the video as raw bytes: curl -H 'Content-Type: application/octet-stream' --data-binary @clip.mp4 URL "
    "(or curl -T clip.mp4 URL, or a multipart upload: curl -F data=@clip.mp4 URL)"
)


@dataclass
class ParsedRequest:
    """One HTTP request: its videos (one, or several for KServe batches) and raw option values."""

    protocol: str
    videos: List[bytes]
    options: Dict[str, Any] = field(default_factory=dict)
    request_id: Optional[str] = None
    input_name: Optional[str] = None


def _lower_headers(headers: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def options_from_headers(headers: Mapping[str, str]) -> Dict[str, str]:
    """Raw option values from (lower-cased) request headers, by option name."""
    found = {}
    for option in REQUEST_OPTIONS:
        for key in option.headers:
            if key in headers:
                found[option.name] = headers[key]
    return found


def _b64(value: Any, where: str) -> bytes:
    if isinstance(value, Mapping) and "b64" in value:
        value = value["b64"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise RequestError(400, "bad_json", f"{where} must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "bad_base64", f"{where} is not valid base64") from None


def _kserve_v1(body: Mapping[str, Any]) -> ParsedRequest:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, "bad_json", "KServe v1 body needs a non-empty 'instances' list")
    videos = []
    for i, instance in enumerate(instances):
        if isinstance(instance, Mapping):
            value = next((instance[k] for k in ("data", "video", "b64") if k in instance), None)
            if value is None:
                raise RequestError(400, "bad_json", f"instances[{i}] needs a 'data' field with the base64 video")
        else:
            value = instance
        videos.append(_b64(value, f"instances[{i}].data"))
    params = body.get("parameters") if isinstance(body.get("parameters"), Mapping) else {}
    return ParsedRequest(KSERVE_V1, videos, dict(params))


def _kserve_v2(body: Mapping[str, Any]) -> ParsedRequest:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], Mapping):
        raise RequestError(400, "bad_json", "Open Inference Protocol body needs exactly one input (BYTES, base64 videos)")
    tensor = inputs[0]
    if str(tensor.get("datatype", "")).upper() != "BYTES":
        raise RequestError(400, "bad_json", f"input datatype must be BYTES, got {tensor.get('datatype')!r}")
    data = tensor.get("data")
    items = data if isinstance(data, list) else [data]
    if not items:
        raise RequestError(400, "bad_json", "input data is empty")
    videos = [_b64(item, f"inputs[0].data[{i}]") for i, item in enumerate(items)]
    params = body.get("parameters") if isinstance(body.get("parameters"), Mapping) else {}
    return ParsedRequest(
        KSERVE_V2, videos, dict(params), request_id=body.get("id"), input_name=str(tensor.get("name", "input-0"))
    )


def _maybe_json(raw: Union[bytes, bytearray]) -> Optional[Mapping[str, Any]]:
    """A JSON object sent as bytes (without a JSON content type, or one TorchServe could not
    decode), else None."""
    if not raw[:1] in (b"{",):
        return None
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    except RecursionError:
        # TorchServe's worker forwards bodies it fails to decode as bytes: nesting past Python's
        # recursion limit lands here, and is the client's error.
        raise RequestError(400, "bad_json", "the JSON body is nested too deeply to be a KServe request") from None
    return parsed if isinstance(parsed, Mapping) else None


def _from_json(body: Mapping[str, Any]) -> ParsedRequest:
    if "instances" in body:
        return _kserve_v1(body)
    if "inputs" in body:
        return _kserve_v2(body)
    if "datatype" in body and "data" in body:
        # One tensor already unwrapped by TorchServe's kservev2 envelope: {name, shape, datatype, data}.
        if str(body.get("datatype", "")).upper() != "BYTES":
            raise RequestError(400, "bad_json", f"input datatype must be BYTES, got {body.get('datatype')!r}")
        return ParsedRequest(
            KSERVE_V2_TENSOR, [_b64(body["data"], "input data")], input_name=str(body.get("name", "input-0"))
        )
    if "data" in body or "b64" in body:
        # One instance already unwrapped by TorchServe's kserve (v1) envelope.
        return ParsedRequest(PLAIN, [_b64(body.get("data", body), "data")])
    raise RequestError(
        400, "bad_json",
        "JSON body is neither KServe v1 ({'instances': [...]}) nor v2 ({'inputs': [...]}); " + CURL_HINT,
    )


def parse_row(row: Any, headers: Optional[Mapping[str, Any]] = None) -> ParsedRequest:
    """Parse one element of the batch TorchServe hands to ``handle``.

    Args:
        row: TorchServe's per-request dict (``{"body": bytes}``, multipart fields, or decoded JSON),
            or one instance unwrapped by a KServe envelope.
        headers: that request's HTTP headers.
    Raises:
        RequestError: 4xx naming what is wrong with the request.
    """
    lowered = _lower_headers(headers)
    content_type = lowered.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise RequestError(
            415, "form_encoded",
            "the body was sent as application/x-www-form-urlencoded (curl's default for --data-binary), "
            "which mangles binary video; " + CURL_HINT,
        )
    if not isinstance(row, Mapping):
        if isinstance(row, (bytes, bytearray)):
            row = {"body": row}
        elif isinstance(row, str):
            row = {"data": row}
        else:
            raise RequestError(400, "bad_request", f"unsupported request shape {type(row).__name__}")

    value = next((row[name] for name in VIDEO_FIELDS if row.get(name) is not None), None)
    if "datatype" in row:
        value = row  # an OIP tensor from the kservev2 envelope: its "data" is not a plain video field
    elif value is None and any(k in row for k in ("instances", "inputs")):
        value = row  # an envelope handed us the decoded object itself
    header_options = options_from_headers(lowered)
    field_options = {k: row[k] for k in REQUEST_OPTION_NAMES if row.get(k) is not None}

    if value is None:
        names = sorted(str(k) for k in row.keys())
        raise RequestError(400, "empty_body", f"no video in the request (fields: {names[:8]}); " + CURL_HINT)
    if isinstance(value, (bytes, bytearray)):
        as_json = _maybe_json(value)  # no full copy of the upload just to look at its first byte
        parsed = _from_json(as_json) if as_json is not None else ParsedRequest(PLAIN, [value])
    elif isinstance(value, Mapping):
        parsed = _from_json(value)
    elif isinstance(value, str):
        parsed = ParsedRequest(PLAIN, [_b64(value, "data")])
    else:
        raise RequestError(400, "bad_request", f"unsupported body type {type(value).__name__}; " + CURL_HINT)

    if any(len(video) == 0 for video in parsed.videos):
        raise RequestError(400, "empty_body", "the request body is empty; " + CURL_HINT)
    # Precedence: headers < multipart fields < KServe parameters (the most specific wins).
    parsed.options = {**header_options, **field_options, **parsed.options}
    return parsed
