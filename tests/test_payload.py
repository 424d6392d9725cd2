"""Request parsing: every supported shape, and a clear 4xx for everything else."""

import base64
import json
from types import SimpleNamespace

import pytest

from handler.errors import RequestError
from handler.request_options import resolve_request_options
from handler.serve_settings import ConfigError, ServeOptions
from handler.protocol import KSERVE_V1, KSERVE_V2, PLAIN, parse_row

VIDEO = b"\x00\x00\x00\x18ftypisom-some-video-bytes"
B64 = base64.b64encode(VIDEO).decode()


def test_raw_body():
    parsed = parse_row({"body": VIDEO}, {"Content-Type": "application/octet-stream"})
    assert (parsed.protocol, parsed.videos, parsed.options) == (PLAIN, [VIDEO], {})


def test_multipart_fields_and_headers_give_options_fields_win():
    parsed = parse_row({"data": VIDEO, "topk": "10"}, {"X-Topk": "3", "clips": "2"})
    assert parsed.videos == [VIDEO] and parsed.options == {"topk": "10", "clips": "2"}


def test_form_encoded_body_gets_415_with_the_right_curl_line():
    with pytest.raises(RequestError) as caught:
        parse_row({"garbled": ""}, {"content-type": "application/x-www-form-urlencoded"})
    assert caught.value.status == 415 and "--data-binary @clip.mp4" in caught.value.message


@pytest.mark.parametrize("row", [{"body": b""}, {}, {"topk": "3"}])
def test_empty_or_missing_video_is_400(row):
    with pytest.raises(RequestError) as caught:
        parse_row(row, {})
    assert caught.value.status == 400 and caught.value.reason == "empty_body"


def test_kserve_v1_native_several_instances_and_parameters():
    body = {"instances": [{"data": B64}, {"data": {"b64": B64}}, B64], "parameters": {"topk": 2}}
    parsed = parse_row({"body": body}, {"Content-Type": "application/json"})
    assert parsed.protocol == KSERVE_V1 and parsed.videos == [VIDEO] * 3 and parsed.options == {"topk": 2}


def test_kserve_v1_json_sent_as_bytes_is_recognised():
    parsed = parse_row({"body": json.dumps({"instances": [{"data": B64}]}).encode()}, {})
    assert parsed.protocol == KSERVE_V1 and parsed.videos == [VIDEO]


def test_kserve_v2_native_bytes_input():
    body = {"id": "r1", "inputs": [{"name": "video", "shape": [2], "datatype": "BYTES", "data": [B64, B64]}]}
    parsed = parse_row({"body": body}, {})
    assert (parsed.protocol, parsed.videos, parsed.request_id, parsed.input_name) == (KSERVE_V2, [VIDEO] * 2, "r1", "video")


def test_rows_unwrapped_by_the_stock_envelopes():
    # The envelope wraps our answer in its own protocol: each row is just one base64 video.
    assert parse_row({"data": B64}, {}).videos == [VIDEO]  # kserve (v1) envelope: one instance
    v2_row = {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": B64}  # kservev2 envelope
    assert parse_row(v2_row, {}).videos == [VIDEO]


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"instances": []}, "bad_json"),
        ({"instances": [{"video_url": "x"}]}, "bad_json"),
        ({"inputs": [{"datatype": "FP32", "data": [1.0]}]}, "bad_json"),
        ({"instances": [{"data": "not base64!"}]}, "bad_base64"),
        ({"hello": "world"}, "bad_json"),
    ],
)
def test_malformed_json_is_400_naming_the_problem(body, reason):
    with pytest.raises(RequestError) as caught:
        parse_row({"body": body}, {"Content-Type": "application/json"})
    assert caught.value.status == 400 and caught.value.reason == reason


def test_request_options_are_validated():
    defaults = ServeOptions()
    assert resolve_request_options({}, defaults, 400).topk == 5
    resolved = resolve_request_options({"topk": "400", "clips": 10, "crops": "3"}, defaults, 400)
    assert (resolved.topk, resolved.clips, resolved.crops) == (400, 10, 3)
    for bad in ({"topk": "0"}, {"topk": "401"}, {"clips": "11"}, {"crops": "2"}, {"topk": "five"}, {"clips": True}):
        with pytest.raises(RequestError) as caught:
            resolve_request_options(bad, defaults, 400)
        assert caught.value.status == 400 and caught.value.reason == "bad_option"


def test_model_config_section_is_checked():
    assert ServeOptions.from_config({"topk": "7", "optimize": "false"}) == ServeOptions(topk=7, optimize=False)
    with pytest.raises(ConfigError, match="unknown keys"):
        ServeOptions.from_config({"top_k": 5})
    with pytest.raises(ConfigError, match="precision"):
        ServeOptions.from_config({"precision": "int8"})


def test_deeply_nested_json_is_400_bad_json():
    # TorchServe's worker gives up decoding it and forwards the bytes; json then hits the recursion limit.
    body = b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(RequestError) as caught:
        parse_row({"body": body}, {"Content-Type": "application/json"})
    assert caught.value.status == 400 and caught.value.reason == "bad_json"


def test_upload_limit_message_is_exact_about_units():
    from handler.plan import check_upload_size

    limit = 200 * 2**20
    check_upload_size([b"x" * 10], limit)
    with pytest.raises(RequestError) as caught:
        check_upload_size([bytearray(limit + 1)], limit)
    message = caught.value.message
    assert caught.value.status == 413 and "209,715,201 bytes" in message and "209,715,200 bytes (200 MiB)" in message
    with pytest.raises(RequestError) as caught:
        check_upload_size([bytearray(limit // 2 + 1)] * 2, limit)
    assert "the 2 videos are" in caught.value.message


def test_kserve_v2_renders_labels_and_embedding_tensors():
    import torch

    from handler.render import ModelInfo, reply, video_answer
    from handler.run import WindowScores
    from handler.runtime_base import Outputs

    model = ModelInfo("slowfast_r50", ["a", "b", "c"], "random", "torchscript-fp32", 3)
    video = SimpleNamespace(container="mp4", codec="h264", width=32, height=32, duration=3.0, rotation=0)

    def answer(options, probabilities, embedding):
        outputs = Outputs(logits=torch.tensor(probabilities).log(), probabilities=torch.tensor(probabilities),
                          embedding=torch.tensor(embedding))
        scores = WindowScores(0, outputs, 1, 0.0, 0.0)
        return video_answer(model=model, options=options, windows=[(0.0, 2.0)], scores=[scores], video=video,
                            frames_decoded=1, decode_ms=0.0, decode_errors=0, warnings=[], batch_size=1, total_ms=0.0)

    both = resolve_request_options({"topk": "1", "output": "both"}, ServeOptions(), 3)
    answers = [answer(both, [0.2, 0.7, 0.1], [0.1, 0.2, 0.3]), answer(both, [0.6, 0.3, 0.1], [0.4, 0.5, 0.6])]
    parsed = parse_row({"body": json.dumps({"inputs": [{"name": "v", "datatype": "BYTES", "data": [B64, B64]}]}).encode()})
    outputs = {o["name"]: o for o in reply(parsed, model, both, answers)["outputs"]}
    assert outputs["embedding"]["shape"] == [2, 3] and outputs["embedding"]["datatype"] == "FP32"
    assert outputs["embedding"]["data"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert outputs["labels"]["data"] == ["b", "a"] and outputs["indices"]["shape"] == [2, 1]
    embedding = resolve_request_options({"output": "embedding"}, ServeOptions(), 3)
    only_embedding = reply(parsed, model, embedding, [{"embedding": a["embedding"]} for a in answers])
    assert [o["name"] for o in only_embedding["outputs"]] == ["embedding"]
