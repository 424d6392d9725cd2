"""TorchServe entry point: decode, sample, batch and classify videos with SlowFast R50.

Orchestration only: parsing lives in ``payload``, decoding in ``decoding``, window choice in
``sampling``, tensor work in ``transforms``/``batch``, the model in ``runtime``. Every request
of a batch gets its own answer and HTTP status; a bad one never fails the others.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.batch import PreparedVideo, run_views, top_predictions
from handler.decoding import DecodeLimits, VideoDecoder
from handler.errors import RequestError
from handler.metrics import HandlerMetrics
from handler.options import RequestOptions, ServeOptions, resolve_request_options
from handler.payload import KSERVE_V1, KSERVE_V2, KSERVE_V2_TENSOR, ParsedRequest, parse_row
from handler.runtime import ModelRuntime, choose_device, cpu_thread_count
from handler.sampling import clip_windows

log = logging.getLogger(__name__)


class SlowFastHandler(BaseHandler):
    """Video (raw body, multipart or KServe JSON) -> top-k Kinetics-400 actions as JSON."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.manifest = context.manifest
        config = getattr(context, "model_yaml_config", None) or {}
        self.options = ServeOptions.from_config(config.get("handler"))
        self.device = choose_device(properties.get("gpu_id"))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_thread_count(self.options, int(config.get("minWorkers", 1) or 1)))
        serialized = (self.manifest or {}).get("model", {}).get("serializedFile", "slowfast_r50.pt")
        self.runtime = ModelRuntime.load(model_dir / serialized, self.device, self.options)
        self.contract = self.runtime.contract
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
            "loaded %s on %s (micro-batch %d, precision %s, %d torch threads)",
            self.contract.model_name, self.device, self.runtime.micro_batch,
            self.options.precision, torch.get_num_threads(),
        )

    # -- per request -------------------------------------------------------------------

    def _headers(self, context: Any, idx: int) -> Dict[str, str]:
        try:
            return dict(context.get_all_request_header(idx) or {})
        except (AttributeError, IndexError, KeyError, TypeError):
            return {}

    def _prepare(self, video: bytes, options: RequestOptions, deadline: float) -> PreparedVideo:
        if len(video) > self.options.max_upload_bytes:
            raise RequestError(
                413, "upload_too_large",
                f"the video is {len(video) / 2**20:.1f} MB; the limit is {self.options.max_upload_mb:g} MB",
            )
        started = time.perf_counter()
        with VideoDecoder(video, self.limits, self.contract.short_side, deadline) as decoder:
            info = decoder.info
            windows = clip_windows(info.duration, self.contract.window_seconds, options.clips)
            sampled = list(decoder.sample_windows(windows, self.contract.num_frames))
            info = decoder.info
            notes = list(decoder.notes)
        decode_ms = (time.perf_counter() - started) * 1000
        frames_decoded = sum(s.frames_decoded for s in sampled)
        errors = sum(s.decode_errors for s in sampled)
        self.metrics.decoded(decode_ms, frames_decoded, info.duration)
        warnings = notes
        if errors:
            warnings.append(
                f"{errors} packet(s) of the video failed to decode (damaged or truncated file); "
                "the answer uses the frames that decoded"
            )
        if options.clips > len(windows):
            warnings.append(f"the video is shorter than one window; {len(windows)} window used instead of {options.clips}")
        frames = [self._to_device(s.frames) for s in sampled]
        return PreparedVideo(
            windows=[(round(a, 4), round(b, 4)) for a, b in windows],
            frames=frames,
            crops=options.crops,
            info={
                "duration_s": round(info.duration, 4), "width": info.width, "height": info.height,
                "rotation": info.rotation, "codec": info.codec, "container": info.container,
                "frames_decoded": frames_decoded, "decode_ms": round(decode_ms, 2),
            },
            warnings=warnings,
        )

    def _to_device(self, frames: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return frames.pin_memory().to(self.device, non_blocking=True)
        return frames

    def _result(self, video: PreparedVideo, topk: int) -> Dict[str, Any]:
        probabilities = video.probability_sum / max(video.views_done, 1)
        result: Dict[str, Any] = {
            "predictions": top_predictions(probabilities, self.contract.labels, topk),
            "windows": [list(w) for w in video.windows],
            "model": self.contract.model_name,
            "views": video.views_done,
            "video": video.info,
            "timings_ms": {
                "decode": video.info["decode_ms"],
                "preprocess": round(video.preprocess_ms, 2),
                "inference": round(video.inference_ms, 2),
            },
        }
        if video.warnings:
            result["warnings"] = video.warnings
        return result

    def _response(self, parsed: ParsedRequest, results: List[Dict[str, Any]]) -> Any:
        if parsed.protocol == KSERVE_V2_TENSOR:
            # TorchServe's kservev2 envelope wraps this in one BYTES output; OIP BYTES elements are strings.
            return json.dumps(results[0])
        if parsed.protocol == KSERVE_V1:
            return {"predictions": results}
        if parsed.protocol == KSERVE_V2:
            k = len(results[0]["predictions"])
            return {
                "model_name": self.contract.model_name,
                "id": parsed.request_id or "",
                "outputs": [
                    {"name": "labels", "datatype": "BYTES", "shape": [len(results), k],
                     "data": [p["label"] for r in results for p in r["predictions"]]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [len(results), k],
                     "data": [p["probability"] for r in results for p in r["predictions"]]},
                    {"name": "indices", "datatype": "INT64", "shape": [len(results), k],
                     "data": [p["index"] for r in results for p in r["predictions"]]},
                ],
            }
        return results[0]

    def handle(self, data: List[Any], context: Any) -> List[Any]:
        """One response per request, in order; each bad request gets its own 4xx status."""
        started = time.perf_counter()
        responses: List[Any] = [None] * len(data)
        accepted: Dict[int, tuple] = {}
        for idx, row in enumerate(data):
            try:
                parsed = parse_row(row, self._headers(context, idx))
                options = resolve_request_options(parsed.options, self.options, self.contract.num_classes)
                # One decode deadline for all videos of the request.
                deadline = time.monotonic() + self.options.max_decode_seconds
                videos = [self._prepare(video, options, deadline) for video in parsed.videos]
                accepted[idx] = (parsed, options, videos)
            except RequestError as error:
                responses[idx] = self._reject(context, idx, error)
            except Exception:  # a bug or resource failure on one input must not fail the batch
                log.exception("request %d failed while decoding", idx)
                responses[idx] = self._reject(
                    context, idx, RequestError(500, "internal_error", "the server failed to process this video")
                )
        all_videos = [video for _, _, videos in accepted.values() for video in videos]
        try:
            run_views(all_videos, self.contract, self.runtime.probabilities, self.runtime.micro_batch)
        except Exception:
            log.exception("model forward failed for a batch of %d videos", len(all_videos))
            for idx in accepted:
                responses[idx] = self._reject(
                    context, idx, RequestError(503, "inference_failed", "the model failed on this batch; retry")
                )
            return responses
        for idx, (parsed, options, videos) in accepted.items():
            post_started = time.perf_counter()
            results = [self._result(video, options.topk) for video in videos]
            post_ms = (time.perf_counter() - post_started) * 1000
            total_ms = (time.perf_counter() - started) * 1000
            for result in results:
                result["timings_ms"]["postprocess"] = round(post_ms, 2)
                result["timings_ms"]["handler_total"] = round(total_ms, 2)
                result["timings_ms"]["batch_size"] = len(data)
            responses[idx] = self._response(parsed, results)
            self.metrics.answered(sum(video.views_done for video in videos))
        return responses

    def _reject(self, context: Any, idx: int, error: RequestError) -> Dict[str, Any]:
        # Under the stock kserve envelope the rows are one request's instances, not requests:
        # statuses exist per request only.
        requests_in_batch = len(getattr(context, "request_ids", None) or {}) or 1
        context.set_response_status(error.status, error.phrase, idx if idx < requests_in_batch else 0)
        self.metrics.rejected(error.reason, error.status)
        log.info("request %d rejected: %d %s: %s", idx, error.status, error.reason, error.message)
        return error.to_body()
