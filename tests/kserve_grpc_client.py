"""A v2 gRPC client for tests/test_kserve.py, run with the kserve venv's python (it has the stubs).

    python tests/kserve_grpc_client.py HOST:PORT MODEL VIDEO [VIDEO ...] [--parameters JSON]

Prints one JSON object: ``server_ready``, ``model_ready``, ``metadata`` (ModelMetadata), and
``infer``: the ModelInfer answer (id, model_name, outputs with name/datatype/shape/data) or
``{"error": {"code": <grpc status name>, "details": ...}}``. Videos go as raw bytes in
``bytes_contents`` of one BYTES input, as a gRPC client sends them (no base64).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "INT64": "int64_contents"}


def parameters(values: dict) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = pb.InferParameter(bool_param=value)
        elif isinstance(value, int):
            out[key] = pb.InferParameter(int64_param=value)
        else:
            out[key] = pb.InferParameter(string_param=str(value))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("model")
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--parameters", default="{}")
    args = parser.parse_args()
    videos = [p.read_bytes() for p in args.videos]
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        result = {
            "server_ready": stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready,
            "model_ready": stub.ModelReady(pb.ModelReadyRequest(name=args.model), timeout=30).ready,
            "metadata": MessageToDict(stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=30)),
        }
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="video", datatype="BYTES", shape=[len(videos)], contents=pb.InferTensorContents(bytes_contents=videos))
        request = pb.ModelInferRequest(model_name=args.model, id="grpc-1", inputs=[tensor],
                                       parameters=parameters(json.loads(args.parameters)))
        try:
            reply = stub.ModelInfer(request, timeout=300)
        except grpc.RpcError as exc:
            result["infer"] = {"error": {"code": exc.code().name, "details": exc.details()}}
        else:
            outputs = []
            for output in reply.outputs:
                data = list(getattr(output.contents, CONTENTS[output.datatype]))
                if output.datatype == "BYTES":
                    data = [item.decode("utf-8") for item in data]
                outputs.append({"name": output.name, "datatype": output.datatype, "shape": list(output.shape),
                                "data": data})
            result["infer"] = {"id": reply.id, "model_name": reply.model_name, "outputs": outputs}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
