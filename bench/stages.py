"""Sections 1-3 (in-process): per-stage times from the handler's own timings, the reference
pipeline on the same video and window, and the model-only forward (the floor), interleaved.

Each repetition runs, back to back: one request through ``SlowFastHandler.handle``, the
reference pipeline on the window the handler chose, and one model-only forward. Ratios are
medians of the same run, so drift on a shared machine hits both sides alike.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import torch

from harness.inproc import InProcessHandler
from harness.reference import ReferencePipeline
from bench.util import progress, ratio, summary

STAGES = ("decode", "preprocess", "inference", "postprocess", "handler_total")


def _stage_times(timings: Dict[str, float]) -> Dict[str, float]:
    """The handler's ``timings_ms`` plus postprocess.

    The handler does not time its answer-building separately (yet): postprocess is
    ``handler_total - decode - preprocess - inference`` (request parsing, top-k, the response dict).
    """
    times = {k: float(timings[k]) for k in ("decode", "preprocess", "inference", "handler_total")}
    if "postprocess" in timings:
        times["postprocess"] = float(timings["postprocess"])
    else:
        times["postprocess"] = max(
            times["handler_total"] - times["decode"] - times["preprocess"] - times["inference"], 0.0
        )
    return times


def measure_video(
    handler: InProcessHandler,
    reference: ReferencePipeline,
    *,
    name: str,
    video: bytes,
    reps: int,
    warmup: int,
    with_reference: bool = True,
) -> Dict[str, Any]:
    samples: Dict[str, List[float]] = {k: [] for k in STAGES}
    samples.update({"decode_preprocess": [], "forward": [], "reference": [], "reference_decode": [],
                    "reference_transform": []})
    floor_input = handler.dummy_pathways(1)
    response: Dict[str, Any] = {}
    reference_error = None
    diff = None
    for rep in range(warmup + reps):
        response = handler.handle(video, capture=(rep == 0))
        times = _stage_times(response["timings_ms"])
        window = response["windows"][0]
        ref_times = None
        if with_reference and reference_error is None:
            try:
                ref_decode, ref_transform, ref_out = reference.run_timed(video, window[0], window[1])
                ref_times = (ref_decode, ref_transform)
                if rep == 0 and handler.last_inputs:
                    ours_fast = handler.last_inputs[0][1]
                    if ours_fast.shape == ref_out[1].shape:
                        diff = round(float((ours_fast - ref_out[1]).abs().mean()), 4)
            except Exception as exc:  # a video the reference cannot read: say so, keep ours
                reference_error = f"{type(exc).__name__}: {exc}"
                progress(f"  reference pipeline failed on {name}: {reference_error}")
        forward_ms = handler.forward_ms(floor_input)
        if rep < warmup:
            continue
        for key in STAGES:
            samples[key].append(times[key])
        samples["decode_preprocess"].append(times["decode"] + times["preprocess"])
        samples["forward"].append(forward_ms)
        if ref_times is not None:
            samples["reference"].append(sum(ref_times))
            samples["reference_decode"].append(ref_times[0])
            samples["reference_transform"].append(ref_times[1])
    result: Dict[str, Any] = {
        "window_s": response["windows"][0],
        "video": response["video"],
        "stages_ms": {key: summary(samples[key]) for key in STAGES},
        "decode_preprocess_ms": summary(samples["decode_preprocess"]),
        "model_forward_ms": summary(samples["forward"]),
        "reference_decode_preprocess_ms": summary(samples["reference"]),
        "reference_stages_ms": {"decode": summary(samples["reference_decode"]),
                                "transform": summary(samples["reference_transform"])},
    }
    ours = result["decode_preprocess_ms"]["median"]
    result["decode_preprocess_over_forward"] = ratio(ours, result["model_forward_ms"]["median"])
    result["speedup_vs_reference"] = ratio(result["reference_decode_preprocess_ms"]["median"], ours)
    if diff is not None:
        result["fast_pathway_mean_abs_diff_vs_reference"] = diff
    if reference_error:
        result["reference_error"] = reference_error
    return result


def model_only(handler: InProcessHandler, batches: List[int], reps: int, warmup: int,
               eager: bool = True) -> Dict[str, Any]:
    """Optimized forward time per micro-batch size and the throughput it allows (views/s; the JSON
    keeps its older name ``clips_per_s``)."""
    forward: Dict[str, Any] = {}
    throughput: Dict[str, float] = {}
    for batch in batches:
        pathways = handler.dummy_pathways(batch)
        times = []
        for rep in range(warmup + reps):
            ms = handler.forward_ms(pathways)
            if rep >= warmup:
                times.append(ms)
        forward[str(batch)] = summary(times)
        throughput[str(batch)] = round(batch * 1000.0 / forward[str(batch)]["median"], 4)
        progress(f"  model-only forward, micro-batch {batch}: {forward[str(batch)]['median']:.0f} ms "
                 f"({throughput[str(batch)]:.3f} views/s)")
    best = max(throughput, key=lambda k: throughput[k])
    eager_ms = _eager_forward(handler, reps, warmup) if eager else summary([])
    return {
        "eager_forward_ms": eager_ms,
        "optimized_speedup_over_eager": ratio(eager_ms["median"], forward[min(forward, key=int)]["median"])
        if eager and min(batches) == 1 else None,
        "forward_ms": forward,
        "clips_per_s": throughput,
        "best_micro_batch": int(best),
        "best_clips_per_s": throughput[best],
        "torch_threads": torch.get_num_threads(),
        "runtime": handler.runtime.name,
    }


def _eager_forward(handler: InProcessHandler, reps: int, warmup: int) -> Dict[str, float]:
    """The same network, eager pytorchvideo (no freeze/optimize), micro-batch 1: what optimizing buys."""
    from export.build import build_variant
    from export.variants import get_variant

    model = build_variant(get_variant(handler.contract.variant), num_classes=handler.contract.num_classes)
    pathways = handler.dummy_pathways(1)
    times = []
    with torch.inference_mode():
        for rep in range(warmup + reps):
            started = time.perf_counter()
            torch.softmax(model(list(pathways)), dim=1)  # the eager Net overwrites its input list
            if rep >= warmup:
                times.append((time.perf_counter() - started) * 1000)
    del model
    result = summary(times)
    progress(f"  eager (unoptimized) forward, micro-batch 1: {result['median']:.0f} ms")
    return result


def run(handler: InProcessHandler, videos: List[Dict[str, Any]], reps: int, warmup: int,
        with_reference: bool = True) -> Dict[str, Any]:
    reference = ReferencePipeline(
        num_frames=handler.contract.num_frames, side=handler.contract.short_side,
        crop=handler.contract.crop_size, alpha=handler.contract.alpha,
        mean=handler.contract.mean, std=handler.contract.std,
    )
    per_video: Dict[str, Any] = {}
    for video in videos:
        started = time.perf_counter()
        progress(f"stages: {video['name']} ({warmup} warm-up + {reps} reps; handler, reference, forward)")
        body = video["path"].read_bytes()
        result = measure_video(handler, reference, name=video["name"], video=body, reps=reps, warmup=warmup,
                               with_reference=with_reference)
        result.update({k: video[k] for k in ("kind", "kinetics_size") if k in video})
        result["bytes"] = len(body)
        per_video[video["name"]] = result
        progress(f"  decode+preprocess {result['decode_preprocess_ms']['median']:.0f} ms, "
                 f"forward {result['model_forward_ms']['median']:.0f} ms, "
                 f"reference {result['reference_decode_preprocess_ms']['median']:.0f} ms "
                 f"({time.perf_counter() - started:.0f} s)")
    return per_video
