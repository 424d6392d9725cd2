"""TorchServe entry point: video in, the served model's labels (and/or SlowFast embeddings, logits) out.

Each request of a batch goes parse -> plan -> decode -> run -> render: ``protocol`` parses it,
``request_options`` reads its options, ``plan`` checks its limits and picks each video's windows and
crops, ``decoding`` samples the windows' frames lazily (``prefetch``: with ``prefetch_windows``, a few
ahead in a thread, while the forwards run), ``run`` scores them through the model
(``runtime``) in micro-batches shared by the whole batch, and ``render`` builds the answer in the
request's wire format, or streams a timeline one JSON line per window. This module only
orchestrates: every request gets its own answer and HTTP status, and a bad one never fails the
others.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

# Before BaseHandler: TorchServe's base_handler imports openvino.torch when OpenVINO is installed,
# and the opt-out must be in place before any openvino code runs.
import handler.telemetry  # noqa: F401,I001
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

from handler.contract import DETECTION, contract_of
from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
from handler.errors import RequestError
from handler.failures import failure_answer
from handler.heap import fix_mmap_threshold, freeze_loaded_objects, release_free_memory
from handler.metrics import HandlerMetrics
from handler.people.service import KeyframeStream, PeopleService
from handler.request_options import RequestOptions, resolve_request_options
from handler.serve_settings import ServeOptions, registration_settings
from handler.plan import check_requested_views, check_upload_size, plan_videos
from handler.prefetch import prefetched
from handler.protocol import PLAIN, ParsedRequest, parse_row
from handler.render import ModelInfo, reply, stream_line, video_answer, window_entry, window_line
from handler.run import WindowFailure, WindowJob, WindowScores, run_windows
from handler.runtime import choose_device, load_runtime
from handler.runtime_base import cpu_thread_count, to_device
from handler.runtime_openvino import INT8_RUNTIME
from handler.priority import lower_cpu_priority
from handler.server_config import require_config_file
from handler.work import RequestWork, VideoWork

log = logging.getLogger(__name__)

# (request index in the batch, one JSON line, the batch's context): sends one line of a streamed
# timeline to that request's client.
LineSender = Callable[[int, str, Any], None]


def send_to_torchserve(index: int, line: str, context: Any) -> None:
    """A timeline line as an intermediate response through the worker's socket to the frontend."""
    send_intermediate_predict_response({index: line}, {index: context.request_ids[index]}, "window", 200, context)


class SlowFastHandler(BaseHandler):
    """Video (raw body, multipart or KServe JSON) -> top-k labels of the model's classes,
    embeddings, logits, timelines.

    ``send_line``: how a streamed timeline's lines leave (TorchServe's intermediate responses; the
    in-process harness passes its own recorder).
    """

    def __init__(self, send_line: LineSender = send_to_torchserve) -> None:
        super().__init__()
        self.send_line = send_line

    def initialize(self, context: Any) -> None:
        self._load(context)
        # What loading created lives as long as the worker: the collection after each batch need
        # not walk it (handler/heap.py).
        freeze_loaded_objects()

    def _load(self, context: Any) -> None:
        # First: a frontend on TorchServe's built-in defaults (no config.properties) must not serve.
        require_config_file()
        # Before any video is decoded: per-window buffers must not fragment the heap (handler/heap.py).
        fix_mmap_threshold()
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.manifest = context.manifest
        config = getattr(context, "model_yaml_config", None) or {}
        # One .mar may be registered under several names (config.properties load_models), each
        # with its own settings: model_name is the name this worker was registered under.
        registered = str(getattr(context, "model_name", "") or "")
        archive = str((self.manifest or {}).get("model", {}).get("modelName", ""))
        self.options = ServeOptions.from_config(registration_settings(config, registered, archive))
        # Before any thread pool starts: the pools inherit the priority (handler/priority.py).
        lower_cpu_priority(self.options.cpu_nice)
        workers = int(config.get("minWorkers", 1) or 1)
        self.device = choose_device(properties.get("gpu_id"))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_thread_count(self.options, workers))
        # torch-model-archiver always writes it: the .pt `make mar` packed.
        serialized = self.manifest["model"]["serializedFile"]
        self.limits = DecodeLimits(
            max_frame_pixels=self.options.max_frame_pixels,
            max_decode_seconds=self.options.max_decode_seconds,
            threads=self.options.decode_threads,
            max_aspect_ratio=self.options.max_aspect_ratio,
        )
        self.metrics = HandlerMetrics(context)
        # An action detector (contract task "detection") has its own request path (handler/people).
        self.people: Optional[PeopleService] = None
        found = contract_of(model_dir / serialized)
        if found is not None and found.task == DETECTION:
            self.people = PeopleService(model_dir / serialized, self.options, self.limits, self.device)
            self.contract = self.people.contract
            self.metrics.set_model_name(self.contract.model_name)
            self.initialized = True
            log.info("loaded action detector %s (weights: %s), runtime %s", self.contract.model_name,
                     self.contract.weights, self.people.model.name)
            return
        self.runtime = load_runtime(model_dir / serialized, self.device, self.options, workers=workers)
        self.contract = self.runtime.contract
        self.model = ModelInfo(
            name=self.contract.model_name, labels=self.contract.labels, weights=self.contract.weights,
            runtime=self.runtime.name, embedding_dim=self.contract.embedding_size,
            activation=self.contract.activation,
            int8=self.contract.int8 if self.runtime.name == INT8_RUNTIME else None,
        )
        self.metrics.set_model_name(self.contract.model_name)
        self.initialized = True
        log.info(
            "loaded %s (weights: %s) on %s: runtime %s, micro-batch %d, %d torch threads",
            self.model.name, self.model.weights, self.device, self.model.runtime, self.runtime.micro_batch,
            torch.get_num_threads(),
        )
        log.info(
            "registered as %s (nice %d): request budget: %d views (videos x windows x crops) per answer, "
            "%d per streamed timeline, %g MiB of video, %g s of decoding",
            registered or "?", self.options.cpu_nice,
            self.options.max_views_per_request, self.options.max_streamed_views_per_request,
            self.options.max_upload_mb, self.options.max_decode_seconds,
        )

    # -- the batch ---------------------------------------------------------------------------

    def handle(self, data: List[Any], context: Any) -> List[Any]:
        """One response per request, in order; each bad request gets its own 4xx status."""
        try:
            return self._handle(data, context)
        finally:
            # This batch's reference cycles are collected and the free pages left in the arenas go
            # back to the system: without both a worker's RSS floor grew ~26 MB, with the trim
            # alone ~11-14 MB per 1,000 requests (handler/heap.py).
            release_free_memory()

    def _handle(self, data: List[Any], context: Any) -> List[Any]:
        if self.people is not None:
            return [self._people_answer(index, row, context) for index, row in enumerate(data)]
        started = time.perf_counter()
        requests = [self._prepare(index, row, context) for index, row in enumerate(data)]
        try:
            self._run(requests, context)
        finally:
            for request in requests:
                for video in request.videos:
                    video.decoder.close()
        total_ms = (time.perf_counter() - started) * 1000
        return [self._render_one(request, context, len(data), total_ms) for request in requests]

    def _people_answer(self, index: int, row: Any, context: Any) -> Any:
        """One action-detection request (handler/people); its error is its own (streamed: its last line)."""
        assert self.people is not None
        stream = KeyframeStream(lambda line: self.send_line(index, line, context))
        try:
            return self.people.answer(row, self._headers(context, index), stream)
        except RequestError as error:
            failure = error
        except Exception as error:  # a bug or resource failure on one input must not fail the batch
            failure = failure_answer(error, "detect the actions in this video", f"action-detection request {index}")
        body = self._reject(context, RequestWork(index, streamed=stream.sent), failure)
        return stream_line(body) if stream.sent else body

    # -- parse and plan ----------------------------------------------------------------------

    def _prepare(self, index: int, row: Any, context: Any) -> RequestWork:
        request = RequestWork(index)
        try:
            request.parsed, request.options = self._read(row, self._headers(context, index))
            request.videos = self._open_and_plan(request.parsed.videos, request.options)
        except RequestError as error:
            request.error = error
        except Exception as error:  # a bug or resource failure on one input must not fail the batch
            request.error = failure_answer(error, "read this request and open its videos", f"request {index}")
        return request

    def _read(self, row: Any, headers: Dict[str, str]) -> Tuple[ParsedRequest, RequestOptions]:
        """Parse, read the options and check the limits that need no video."""
        parsed = parse_row(row, headers)
        options = resolve_request_options(parsed.options, self.options, self.contract.num_classes)
        if options.stream and parsed.protocol != PLAIN:
            raise RequestError(400, "bad_option", "stream applies to plain requests, not KServe envelopes")
        check_upload_size(parsed.videos, self.options.max_upload_bytes)
        check_requested_views(len(parsed.videos), options, self.options)
        return parsed, options

    def _open_and_plan(self, videos: List[bytes], options: RequestOptions) -> List[VideoWork]:
        """Open (and probe) each video, then plan its windows from the durations found."""
        # One decoding budget for all the videos of a request; per window for a streamed timeline
        # where streaming allows more views than an answer (the timeline registration): on the
        # main registration a stream holds the worker no longer than any answer may.
        per_window = options.stream and self.options.streaming_extends_budget
        budget = DecodeBudget(self.options.max_decode_seconds, per_window=per_window)
        decoders: List[VideoDecoder] = []
        try:
            for video in videos:
                decoders.append(VideoDecoder(video, self.limits, self.contract.short_side, budget=budget))
            plans = plan_videos([d.info.duration for d in decoders], self.contract, options, self.options)
        except BaseException:
            for decoder in decoders:
                decoder.close()
            raise
        return [VideoWork(decoder, plan) for decoder, plan in zip(decoders, plans)]

    def _headers(self, context: Any, idx: int) -> Dict[str, str]:
        # Under the stock kserve envelope the rows are one request's instances, not requests:
        # headers exist per request only, and rows past the first request have none of their own.
        if idx >= _requests_in_batch(context):
            return {}
        return dict(context.get_all_request_header(idx) or {})

    # -- decode and run ----------------------------------------------------------------------

    def _run(self, requests: List[RequestWork], context: Any) -> None:
        # Short requests first: a long timeline in the same batch then delays no one's first forward.
        ordered = sorted((r for r in requests if r.error is None), key=lambda r: r.views)
        by_key = {request.index: request for request in ordered}
        try:
            # The next windows decode (in a thread, prefetch_windows ahead) while this one's forward
            # runs; the block's end joins that thread before `handle` closes the decoders.
            with prefetched(self._jobs(ordered), self.options.prefetch_windows) as jobs:
                for result in run_windows(jobs, self.contract, self.runtime.infer, self.runtime.micro_batch):
                    request = by_key[result.key[0]]
                    if request.error is not None:
                        continue
                    if isinstance(result, WindowFailure):  # this window's preprocessing or forward: this request only
                        request.error = failure_answer(result.error, "score this video", f"request {request.index}")
                        continue
                    video = request.videos[result.key[1]]
                    video.scores.append(result)
                    if request.streaming:
                        self._stream_window(request, video, result, context)
        except Exception as error:  # outside any one window (run_windows itself): every unfinished request
            unfinished = [r for r in ordered if r.error is None and not self._complete(r)]
            failure = failure_answer(error, "score this video", f"{len(unfinished)} request(s) of a batch")
            for request in unfinished:
                request.error = failure

    @staticmethod
    def _complete(request: RequestWork) -> bool:
        return all(len(video.scores) == len(video.plan.windows) for video in request.videos)

    def _jobs(self, requests: List[RequestWork]) -> Iterator[WindowJob]:
        """Windows of every request, decoded one by one as the model needs them (with
        ``prefetch_windows``, that many ahead, in the prefetch thread: see ``_run``).

        A decoding failure ends that request (its error is recorded) and no other. A request that
        failed meanwhile (its window's forward, its timeline's client gone) is decoded no further:
        at most ``prefetch_windows`` of its windows were decoded ahead for nothing."""
        for request in requests:
            try:
                for video_index, video in enumerate(request.videos):
                    yield from self._video_jobs(request, video_index, video)
            except RequestError as error:
                request.error = error
            except Exception as error:  # noqa: BLE001 (answered 500 or 503, logged with an error id)
                request.error = failure_answer(error, "decode this video", f"request {request.index}")

    def _video_jobs(self, request: RequestWork, video_index: int, video: VideoWork) -> Iterator[WindowJob]:
        assert request.options is not None
        sampled_windows = video.decoder.sample_windows(video.plan.windows, self.contract.num_frames)
        for window_index in range(len(video.plan.windows)):
            if request.error is not None:  # e.g. its timeline could not be sent: decode no more of it
                return
            started = time.perf_counter()
            sampled = next(sampled_windows)
            video.decode_ms += (time.perf_counter() - started) * 1000
            video.frames_decoded += sampled.frames_decoded
            video.decode_errors += sampled.decode_errors
            yield WindowJob((request.index, video_index, window_index), self._to_device(sampled.frames), request.options.crops)
        self.metrics.decoded(video.decode_ms, video.frames_decoded, video.decoder.info.duration)

    def _to_device(self, frames: torch.Tensor) -> torch.Tensor:
        return to_device(frames, self.device)

    # -- render ------------------------------------------------------------------------------

    def _stream_window(self, request: RequestWork, video: VideoWork, scores: WindowScores, context: Any) -> None:
        """Send one timeline line; a failure ends this request (its last line says why), no other."""
        assert request.options is not None
        try:
            entry = window_entry(
                model=self.model, options=request.options, window=video.plan.windows[scores.key[2]],
                outputs=scores.outputs,
            )
            line = window_line(entry, request.streamed, sum(len(v.plan.windows) for v in request.videos))
            self.send_line(request.index, line, context)
        except Exception as error:  # noqa: BLE001 (the client may have gone: this request only)
            request.error = failure_answer(error, "send this timeline", f"request {request.index}")
            return
        request.streamed += 1

    def _answer(self, request: RequestWork, video: VideoWork, batch_size: int, total_ms: float) -> Dict[str, Any]:
        assert request.options is not None
        return video_answer(
            model=self.model, options=request.options, windows=video.plan.windows, scores=video.scores,
            video=video.decoder.info, frames_decoded=video.frames_decoded, decode_ms=video.decode_ms,
            decode_errors=video.decode_errors, warnings=[*video.plan.warnings, *video.decoder.warnings],
            batch_size=batch_size, total_ms=total_ms,
        )

    def _render_one(self, request: RequestWork, context: Any, batch_size: int, total_ms: float) -> Any:
        """One request's reply; a failure while rendering it answers it 500 and no other."""
        try:
            return self._render(request, context, batch_size, total_ms)
        except Exception as error:  # a bug in rendering one answer must not fail the batch's other answers
            request.error = failure_answer(error, "render this answer", f"request {request.index}")
            return self._reject(context, request, request.error)

    def _render(self, request: RequestWork, context: Any, batch_size: int, total_ms: float) -> Any:
        if request.error is not None:
            return self._reject(context, request, request.error)
        assert request.parsed is not None
        answers = [self._answer(request, video, batch_size, total_ms) for video in request.videos]
        self.metrics.answered(sum(answer["views"] for answer in answers))
        body = reply(request.parsed, self.model, request.options, answers)
        return stream_line(body) if request.streaming else body

    def _reject(self, context: Any, request: RequestWork, error: RequestError) -> Any:
        # Under the stock kserve envelope the rows are one request's instances: statuses exist per
        # request only.
        idx = request.index
        if not request.streamed:  # once lines went out, the status line was already sent as 200
            context.set_response_status(error.status, error.phrase, idx if idx < _requests_in_batch(context) else 0)
        self.metrics.rejected(error.reason, error.status)
        log.info("request %d rejected: %d %s: %s", idx, error.status, error.reason, error.message)
        return stream_line(error.to_body()) if request.streaming else error.to_body()


def _requests_in_batch(context: Any) -> int:
    """HTTP requests in this batch (rows may be more: the instances of one KServe request)."""
    return len(getattr(context, "request_ids", None) or {}) or 1
