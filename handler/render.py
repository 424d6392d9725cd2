"""Rendering: a request's scores -> its reply, in the wire format the request came in.

``OUTPUT_KINDS`` is the one registry of what an answer can hold. Each kind says which vector it
shows (its computation, e.g. the embedding's L2 normalisation), how that vector reads in JSON (in
a timeline entry and in a video's answer) and as KServe v2 / Open Inference Protocol tensors. A
request's ``output`` option names the kinds it gets (``handler.option_table.OUTPUTS``).

``video_answer`` builds one video's JSON answer; ``reply`` wraps a request's answers as plain
JSON, KServe v1 or v2; a streamed timeline is JSON lines (``window_line`` per window, the full
answer last through ``stream_line``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch

from handler.contract import Int8Figures
from handler.request_options import RequestOptions
from handler.protocol import KSERVE_V1, KSERVE_V2, KSERVE_V2_TENSOR, ParsedRequest
from handler.run import WindowScores, mean_scores
from handler.runtime_base import Outputs

Window = Tuple[float, float]

# Seconds in answers (window bounds, durations) and milliseconds in timings: rounded to these places.
SECONDS_PLACES = 4
MS_PLACES = 2


@dataclass(frozen=True)
class ModelInfo:
    """What every answer says about the model serving it."""

    name: str
    labels: Sequence[str]
    weights: str
    runtime: str
    embedding_dim: int
    activation: str = "softmax"
    # The int8 model's agreement with fp32, measured at export (served as openvino-int8), else None.
    int8: Optional[Int8Figures] = None


def int8_agreement(figures: Int8Figures) -> Dict[str, Any]:
    """What an int8 answer says of its price: agreement with fp32 on windows held out at export."""
    return {
        "top1_agreement": round(figures.top1_agreement, 4), "top5_overlap": round(figures.top5_overlap, 4),
        "max_abs_probability_delta": round(figures.max_abs_probability_delta, 5),
        "logit_correlation": round(figures.logit_correlation, 6),
        "held_out_windows": figures.held_out_windows, "held_out_videos": figures.held_out_videos,
        "kept_fp32": figures.kept_fp32,
    }


def _floats(values: Sequence[float]) -> List[float]:
    # 9 significant digits give back every float32 exactly; more would only add bytes.
    return [float(f"{v:.9g}") for v in values]


def top_predictions(
    probabilities: Sequence[float], labels: Sequence[str], k: int, threshold: Optional[float] = None
) -> List[Dict[str, Any]]:
    """Top-``k`` of a (classes,) probability vector, descending, as ``{label, index, probability}``;
    with ``threshold``, only those at or above it (possibly none)."""
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:k]
    if threshold is not None:
        order = [i for i in order if probabilities[i] >= threshold]
    return [{"label": labels[i], "index": i, "probability": float(probabilities[i])} for i in order]


# -- the output kinds --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputKind:
    """One thing an answer can hold, under ``key``.

    ``vector(outputs, options)``: the (N,) float32 vector shown, from the model's outputs of one
    window or averaged over a video's windows. ``window_json`` / ``video_json(vector, model,
    options)``: its JSON in a timeline entry / in a video's answer. ``tensors(values)``: the KServe
    v2 output tensors for ``values``, the ``video_json`` of each video of the request, in order.
    """

    name: str
    key: str
    vector: Callable[[Outputs, RequestOptions], torch.Tensor]
    window_json: Callable[[torch.Tensor, ModelInfo, RequestOptions], Any]
    video_json: Callable[[torch.Tensor, ModelInfo, RequestOptions], Any]
    tensors: Callable[[List[Any]], List[Dict[str, Any]]]


def _predictions(vector: torch.Tensor, model: ModelInfo, options: RequestOptions) -> List[Dict[str, Any]]:
    return top_predictions(vector.tolist(), model.labels, options.topk, options.threshold)


# A threshold can leave videos with different numbers of labels: a tensor's rows are padded to the
# longest with this entry (index -1: no label).
NO_LABEL = {"label": "", "probability": 0.0, "index": -1}


def _label_tensors(values: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    width = max(len(top) for top in values)
    rows = [top + [NO_LABEL] * (width - len(top)) for top in values]
    shape = [len(rows), width]
    return [
        {"name": name, "datatype": datatype, "shape": shape, "data": [p[key] for top in rows for p in top]}
        for name, datatype, key in (("labels", "BYTES", "label"), ("probabilities", "FP32", "probability"),
                                    ("indices", "INT64", "index"))
    ]


def _embedding(outputs: Outputs, options: RequestOptions) -> torch.Tensor:
    return torch.nn.functional.normalize(outputs.embedding, dim=0) if options.normalize else outputs.embedding


def _embedding_answer(vector: torch.Tensor, model: ModelInfo, options: RequestOptions) -> Dict[str, Any]:
    values = _floats(vector.tolist())
    return {"model": model.name, "dim": len(values), "normalized": options.normalize, "values": values}


def _vector_tensors(name: str) -> Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]:
    """KServe v2 tensors of a kind whose answer holds ``values``: one FP32 ``name`` [videos, N]."""
    def tensors(answers: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return [{"name": name, "datatype": "FP32", "shape": [len(answers), len(answers[0]["values"])],
                 "data": [v for answer in answers for v in answer["values"]]}]
    return tensors


def _logits_answer(vector: torch.Tensor, model: ModelInfo, options: RequestOptions) -> Dict[str, Any]:
    # The activation says how the logits became this model's probabilities (softmax or sigmoid).
    return {"activation": model.activation, "values": _floats(vector.tolist())}



LABELS = OutputKind(
    name="labels", key="predictions",
    vector=lambda outputs, options: outputs.probabilities,
    window_json=_predictions, video_json=_predictions, tensors=_label_tensors,
)
EMBEDDING = OutputKind(
    name="embedding", key="embedding",
    vector=_embedding,
    window_json=lambda vector, model, options: _floats(vector.tolist()),
    video_json=_embedding_answer, tensors=_vector_tensors("embedding"),
)
# The raw class scores in label order (index i: the label with "index": i), averaged over the views.
LOGITS = OutputKind(
    name="logits", key="logits",
    vector=lambda outputs, options: outputs.logits,
    window_json=lambda vector, model, options: _floats(vector.tolist()),
    video_json=_logits_answer, tensors=_vector_tensors("logits"),
)
OUTPUT_KINDS: Mapping[str, OutputKind] = {kind.name: kind for kind in (LABELS, EMBEDDING, LOGITS)}


def kinds_of(options: RequestOptions) -> List[OutputKind]:
    return [OUTPUT_KINDS[name] for name in options.kinds]


# -- one video's answer ------------------------------------------------------------------------


class VideoFacts(Protocol):
    """What the container says about a video (``decoding.VideoInfo``)."""

    container: str
    codec: str
    width: int
    height: int
    duration: float
    rotation: int


def in_source_clock(window: Window, options: RequestOptions) -> Window:
    """A planned window (seconds in the upload) as the answer names it: in the source's clock when
    the upload is a cut of a longer video (``source_offset``), else as it is."""
    return window[0] + options.offset, window[1] + options.offset


def window_entry(*, model: ModelInfo, options: RequestOptions, window: Window, outputs: Outputs) -> Dict[str, Any]:
    """One timeline entry: ``{start, end, <each kind's key>}``."""
    start, end = in_source_clock(window, options)
    entry: Dict[str, Any] = {"start": round(start, SECONDS_PLACES), "end": round(end, SECONDS_PLACES)}
    for kind in kinds_of(options):
        entry[kind.key] = kind.window_json(kind.vector(outputs, options), model, options)
    return entry


def video_answer(
    *,
    model: ModelInfo,
    options: RequestOptions,
    windows: Sequence[Window],
    scores: Sequence[WindowScores],
    video: VideoFacts,
    frames_decoded: int,
    decode_ms: float,
    decode_errors: int,
    warnings: Sequence[str],
    batch_size: int,
    total_ms: float,
) -> Dict[str, Any]:
    """One video's answer: each kind over the mean of its windows, the timeline if asked, what ran.

    ``windows``: the plan's windows (seconds in the upload; named in the source's clock for a cut), ``scores``: theirs, in the same order. ``warnings``: sentences from planning and decoding; ``decode_errors``: packets that failed to
    decode (said in one more warning); ``total_ms``: the handler's time for the whole batch.
    """
    mean = mean_scores(scores, model.activation)
    answer: Dict[str, Any] = {}
    for kind in kinds_of(options):
        answer[kind.key] = kind.video_json(kind.vector(mean, options), model, options)
    if options.timeline:
        answer["timeline"] = [
            window_entry(model=model, options=options, window=window, outputs=s.outputs)
            for window, s in zip(windows, scores)
        ]
    answer.update({
        "windows": [[round(a, SECONDS_PLACES), round(b, SECONDS_PLACES)]
                    for a, b in (in_source_clock(window, options) for window in windows)],
        "model": model.name,
        "weights": model.weights,
        "runtime": model.runtime,
        **({"int8_agreement": int8_agreement(model.int8)} if model.int8 is not None else {}),
        "views": sum(s.views for s in scores),
        "video": {
            # A cut of a longer video (source_duration) answers for the source.
            "duration_s": round(video.duration if options.source_duration is None else options.source_duration,
                                SECONDS_PLACES), "width": video.width, "height": video.height,
            "rotation": video.rotation, "codec": video.codec, "container": video.container,
            "frames_decoded": frames_decoded, "decode_errors": decode_errors,
            "decode_ms": round(decode_ms, MS_PLACES),
        },
        "timings_ms": {
            "decode": round(decode_ms, MS_PLACES),
            "preprocess": round(sum(s.preprocess_ms for s in scores), MS_PLACES),
            "inference": round(sum(s.inference_ms for s in scores), MS_PLACES),
            "handler_total": round(total_ms, MS_PLACES),
            "batch_size": batch_size,
        },
    })
    warnings = list(warnings)
    if decode_errors:
        warnings.append(
            f"{decode_errors} decode error(s): packets that failed to decode or frames FFmpeg concealed "
            "(damaged or truncated file); the answer uses the frames that decoded"
        )
    if warnings:
        answer["warnings"] = warnings
    return answer


# -- the reply ---------------------------------------------------------------------------------


def reply(parsed: ParsedRequest, model: ModelInfo, options: RequestOptions, answers: List[Dict[str, Any]]) -> Any:
    """The reply body for one request whose videos were all answered (``answers``: one per video)."""
    if parsed.protocol == KSERVE_V2_TENSOR:
        # TorchServe's kservev2 envelope wraps this in one BYTES output; OIP BYTES elements are strings.
        return json.dumps(answers[0])
    if parsed.protocol == KSERVE_V1:
        return {"predictions": answers}
    if parsed.protocol == KSERVE_V2:
        outputs = [t for kind in kinds_of(options) for t in kind.tensors([a[kind.key] for a in answers])]
        return {"model_name": model.name, "id": parsed.request_id or "", "outputs": outputs}
    return answers[0]


def stream_line(obj: Mapping[str, Any]) -> str:
    """One line of a streamed answer: compact JSON and a newline."""
    return json.dumps(obj, separators=(",", ":")) + "\n"


def window_line(entry: Mapping[str, Any], index: int, count: int) -> str:
    """The streamed line announcing one computed window of a timeline."""
    return stream_line({"window": {"index": index, "of": count, **entry}})
