"""TorchServe entry point: video in, Kinetics-400 actions (and/or SlowFast embeddings) out.

Each request of a batch goes parse -> plan -> decode -> run -> render:
``protocol`` parses it and checks its limits, ``plan`` picks each video's windows and crops
within budget, ``decoding`` samples the windows' frames lazily, ``run`` scores them through the
model (``runtime``) in micro-batches shared by the whole batch, and ``protocol`` renders the
answer, or streams a timeline one JSON line per window. This module only orchestrates: every
request gets its own answer and HTTP status, and a bad one never fails the others.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import torch

# Before BaseHandler: TorchServe's base_handler imports openvino.torch when OpenVINO is installed,
# and the opt-out must be in place before any openvino code runs.
import handler.telemetry  # noqa: F401,I001
from ts.torch_handler.base_handler import BaseHandler

from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
from handler.errors import RequestError
from handler.metrics import HandlerMetrics
from handler.options import RequestOptions, ServeOptions, resolve_request_options
from handler.plan import check_requested_views, plan_videos
from handler.protocol import (
    PLAIN, ModelInfo, ParsedRequest, check_upload_size, parse_row, render_embedding, render_response,
    render_window, stream_line, top_predictions, window_line,
)
from handler.run import WindowJob, WindowScores, mean_scores, run_windows
from handler.work import RequestWork, VideoWork
from handler.runtime import ModelRuntime, choose_device, cpu_thread_count
from handler.heap import fix_mmap_threshold
from handler.server_config import require_config_file

log = logging.getLogger(__name__)

try:
    from ts.handler_utils.utils import send_intermediate_predict_response
except ImportError:  # unit tests without TorchServe's worker utilities
    send_intermediate_predict_response = None  # type: ignore[assignment]


class SlowFastHandler(BaseHandler):
    """Video (raw body, multipart or KServe JSON) -> top-k Kinetics-400 actions, embeddings, timelines."""

    def initialize(self, context: Any) -> None:
        # First: a frontend on TorchServe's built-in defaults (no config.properties) must not serve.
        require_config_file()
        # Before any video is decoded: per-window buffers must not fragment the heap (handler/heap.py).
        fix_mmap_threshold()
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.manifest = context.manifest
        config = getattr(context, "model_yaml_config", None) or {}
        self.options = ServeOptions.from_config(config.get("handler"))
        workers = int(config.get("minWorkers", 1) or 1)
        self.device = choose_device(properties.get("gpu_id"))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_thread_count(self.options, workers))
        serialized = (self.manifest or {}).get("model", {}).get("serializedFile", "slowfast_r50.pt")
        self.runtime = ModelRuntime.load(model_dir / serialized, self.device, self.options, workers=workers)
        self.contract = self.runtime.contract
        self.model = ModelInfo(
            name=self.contract.model_name, labels=self.contract.labels, weights=self.contract.weights,
            runtime=self.runtime.name, embedding_dim=self.contract.embedding_size,
        )
        self.limits = DecodeLimits(
            max_frame_pixels=self.options.max_frame_pixels,
            max_decode_seconds=self.options.max_decode_seconds,
            threads=self.options.decode_threads,
            max_aspect_ratio=self.options.max_aspect_ratio,
        )
        self.metrics = HandlerMetrics(context)
        self.metrics.set_model_name(self.contract.model_name)
        self.initialized = True
        log.info(
            "loaded %s (weights: %s) on %s: runtime %s, micro-batch %d, %d torch threads",
            self.model.name, self.model.weights, self.device, self.model.runtime, self.runtime.micro_batch,
            torch.get_num_threads(),
        )
        log.info(
            "request budget: %d views (videos x windows x crops) per answer, %d per streamed timeline, "
            "%g MiB of video, %g s of decoding",
            self.options.max_views_per_request, self.options.max_streamed_views_per_request,
            self.options.max_upload_mb, self.options.max_decode_seconds,
        )

    # -- the batch ---------------------------------------------------------------------------

    def handle(self, data: List[Any], context: Any) -> List[Any]:
        """One response per request, in order; each bad request gets its own 4xx status."""
        started = time.perf_counter()
        requests = [self._prepare(index, row, context) for index, row in enumerate(data)]
        try:
            self._run(requests, context)
        finally:
            for request in requests:
                for video in request.videos:
                    video.decoder.close()
        total_ms = (time.perf_counter() - started) * 1000
        return [self._render(request, context, len(data), total_ms) for request in requests]

    # -- parse and plan ----------------------------------------------------------------------

    def _prepare(self, index: int, row: Any, context: Any) -> RequestWork:
        request = RequestWork(index)
        try:
            request.parsed = parse_row(row, self._headers(context, index))
            request.options = resolve_request_options(request.parsed.options, self.options, self.contract.num_classes)
            if request.options.stream and request.parsed.protocol != PLAIN:
                raise RequestError(400, "bad_option", "stream applies to plain requests, not KServe envelopes")
            check_upload_size(request.parsed.videos, self.options.max_upload_bytes)
            check_requested_views(len(request.parsed.videos), request.options, self.options)
            # One decoding budget for all the videos of a request (per window for a streamed timeline).
            budget = DecodeBudget(self.options.max_decode_seconds, per_window=request.streaming)
            for video in request.parsed.videos:
                decoder = VideoDecoder(video, self.limits, self.contract.short_side, budget=budget)
                request.videos.append(VideoWork(decoder, plan=None))  # type: ignore[arg-type]
            plans = plan_videos(
                [video.decoder.info.duration for video in request.videos], self.contract, request.options, self.options
            )
            for video, plan in zip(request.videos, plans):
                video.plan = plan
        except RequestError as error:
            request.error = error
        except Exception:  # a bug or resource failure on one input must not fail the batch
            log.exception("request %d failed while being prepared", index)
            request.error = RequestError(500, "internal_error", "the server failed to process this video")
        return request

    def _headers(self, context: Any, idx: int) -> Dict[str, str]:
        try:
            return dict(context.get_all_request_header(idx) or {})
        except (AttributeError, IndexError, KeyError, TypeError):
            return {}

    # -- decode and run ----------------------------------------------------------------------

    def _run(self, requests: List[RequestWork], context: Any) -> None:
        # Short requests first: a long timeline in the same batch then delays no one's first forward.
        ordered = sorted((r for r in requests if r.error is None), key=lambda r: r.views)
        by_key = {request.index: request for request in ordered}
        try:
            for scores in run_windows(self._jobs(ordered), self.contract, self.runtime.infer, self.runtime.micro_batch):
                request = by_key[scores.key[0]]
                if request.error is not None:
                    continue
                video = request.videos[scores.key[1]]
                video.scores.append(scores)
                if request.streaming:
                    self._stream_window(request, video, scores, context)
        except Exception:
            log.exception("model forward failed for a batch of %d requests", len(ordered))
            for request in ordered:
                if request.error is None and not self._complete(request):
                    request.error = RequestError(503, "inference_failed", "the model failed on this batch; retry")

    @staticmethod
    def _complete(request: RequestWork) -> bool:
        return all(len(video.scores) == len(video.plan.windows) for video in request.videos)

    def _jobs(self, requests: List[RequestWork]) -> Iterator[WindowJob]:
        """Windows of every request, decoded one by one as the model needs them.

        A decoding failure ends that request (its error is recorded) and no other."""
        for request in requests:
            try:
                for video_index, video in enumerate(request.videos):
                    yield from self._video_jobs(request, video_index, video)
            except RequestError as error:
                request.error = error
            except Exception:
                log.exception("request %d failed while decoding", request.index)
                request.error = RequestError(500, "internal_error", "the server failed to process this video")

    def _video_jobs(self, request: RequestWork, video_index: int, video: VideoWork) -> Iterator[WindowJob]:
        assert request.options is not None
        sampled_windows = video.decoder.sample_windows(video.plan.windows, self.contract.num_frames)
        for window_index in range(len(video.plan.windows)):
            started = time.perf_counter()
            sampled = next(sampled_windows)
            video.decode_ms += (time.perf_counter() - started) * 1000
            video.frames_decoded += sampled.frames_decoded
            video.decode_errors += sampled.decode_errors
            yield WindowJob((request.index, video_index, window_index), self._to_device(sampled.frames), request.options.crops)
        self.metrics.decoded(video.decode_ms, video.frames_decoded, video.decoder.info.duration)

    def _to_device(self, frames: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return frames.pin_memory().to(self.device, non_blocking=True)
        return frames

    # -- render ------------------------------------------------------------------------------

    def _window_entry(self, options: RequestOptions, window: Tuple[float, float], scores: WindowScores) -> Dict[str, Any]:
        return render_window(
            self.model, window,
            scores.probabilities.tolist() if options.wants_labels else None,
            self._embedding(scores.embedding, options).tolist() if options.wants_embedding else None,
            options.topk, options.threshold,
        )

    @staticmethod
    def _embedding(vector: torch.Tensor, options: RequestOptions) -> torch.Tensor:
        return torch.nn.functional.normalize(vector, dim=0) if options.normalize else vector

    def _stream_window(self, request: RequestWork, video: VideoWork, scores: WindowScores, context: Any) -> None:
        assert request.options is not None
        window_index = scores.key[2]
        entry = self._window_entry(request.options, video.plan.windows[window_index], scores)
        line = window_line(entry, request.streamed, sum(len(v.plan.windows) for v in request.videos))
        request.streamed += 1
        if send_intermediate_predict_response is None or not hasattr(context, "cl_socket"):
            getattr(context, "streamed", {}).setdefault(request.index, []).append(line)  # in-process harness
            return
        request_id = context.request_ids[request.index]
        send_intermediate_predict_response({request.index: line}, {request.index: request_id}, "window", 200, context)

    def _answer(self, request: RequestWork, video: VideoWork, batch_size: int, total_ms: float) -> Dict[str, Any]:
        options = request.options
        assert options is not None
        probabilities, embedding = mean_scores(video.scores, self.contract.activation)
        info = video.decoder.info
        answer: Dict[str, Any] = {}
        if options.wants_labels:
            answer["predictions"] = top_predictions(probabilities.tolist(), self.model.labels, options.topk, options.threshold)
        if options.wants_embedding:
            answer["embedding"] = render_embedding(
                self.model, self._embedding(embedding, options).tolist(), options.normalize
            )
        if options.timeline:
            answer["timeline"] = [
                self._window_entry(options, window, scores) for window, scores in zip(video.plan.windows, video.scores)
            ]
        answer.update({
            "windows": [[round(a, 4), round(b, 4)] for a, b in video.plan.windows],
            "model": self.model.name,
            "weights": self.model.weights,
            "runtime": self.model.runtime,
            "views": sum(s.views for s in video.scores),
            "video": {
                "duration_s": round(info.duration, 4), "width": info.width, "height": info.height,
                "rotation": info.rotation, "codec": info.codec, "container": info.container,
                "frames_decoded": video.frames_decoded, "decode_ms": round(video.decode_ms, 2),
            },
            "timings_ms": {
                "decode": round(video.decode_ms, 2),
                "preprocess": round(sum(s.preprocess_ms for s in video.scores), 2),
                "inference": round(sum(s.inference_ms for s in video.scores), 2),
                "handler_total": round(total_ms, 2),
                "batch_size": batch_size,
            },
        })
        warnings = list(video.plan.warnings) + list(video.decoder.notes)
        if video.decode_errors:
            warnings.append(
                f"{video.decode_errors} packet(s) of the video failed to decode (damaged or truncated file); "
                "the answer uses the frames that decoded"
            )
        if warnings:
            answer["warnings"] = warnings
        return answer

    def _render(self, request: RequestWork, context: Any, batch_size: int, total_ms: float) -> Any:
        if request.error is not None:
            return self._reject(context, request, request.error)
        assert request.parsed is not None
        answers = [self._answer(request, video, batch_size, total_ms) for video in request.videos]
        self.metrics.answered(sum(answer["views"] for answer in answers))
        body = render_response(request.parsed, self.model, answers)
        return stream_line(body) if request.streaming else body

    def _reject(self, context: Any, request: RequestWork, error: RequestError) -> Any:
        # Under the stock kserve envelope the rows are one request's instances, not requests:
        # statuses exist per request only.
        requests_in_batch = len(getattr(context, "request_ids", None) or {}) or 1
        idx = request.index
        if not request.streamed:  # once lines went out, the status line was already sent as 200
            context.set_response_status(error.status, error.phrase, idx if idx < requests_in_batch else 0)
        self.metrics.rejected(error.reason, error.status)
        log.info("request %d rejected: %d %s: %s", idx, error.status, error.reason, error.message)
        return stream_line(error.to_body()) if request.streaming else error.to_body()
