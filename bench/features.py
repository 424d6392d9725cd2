"""Timeline and embedding sections, through the benchmark's real TorchServe.

``timeline``: a streamed timeline of a long synthesized 720p video at the default stride: total
time, time to the first line, frames decoded per frame sampled, decode + preprocess as a share
of the summed forwards, the worker's peak RSS against a single default request on the same video,
and the single-pass check (no frame decoded twice: frames decoded <= frames in the video).

``embedding``: the same video asked for labels and for its embedding, interleaved: an embedding
costs the same forward, so its latency must match the labels'.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.util import fmt_ms, percentile, progress, ratio, summary, target
from harness.memory import peak_rss_mb, reset_peak


def _peak_mb(pid: Optional[int], run: Callable[[], Any]) -> Tuple[Any, Optional[float]]:
    """(result of ``run()``, the worker's peak RSS in MB while it ran, or None)."""
    reset = bool(pid) and reset_peak(pid)
    result = run()
    return result, (round(peak_rss_mb(pid), 1) if reset else None)


def timeline(served: Any, video: Dict[str, Any], num_frames: int) -> Dict[str, Any]:
    """One plain default request, then one streamed timeline of the whole video (default stride), both
    on the timeline registration's worker (the main registration refuses a timeline this long)."""
    from bench.served import TIMELINE_MODEL

    body = video["path"].read_bytes()
    pid = served.worker_pid(TIMELINE_MODEL)
    progress(f"timeline: {video['name']} ({len(body) / 2**20:.1f} MB), "
             "a single default request first for the memory baseline")
    single, single_peak = _peak_mb(pid, lambda: served.predict(body, model=TIMELINE_MODEL))

    def streamed() -> Dict[str, Any]:
        started = time.perf_counter()
        arrivals: List[float] = []
        lines: List[Dict[str, Any]] = []
        with served.post(body, {"timeline": "true", "stream": "true"}, stream=True, model=TIMELINE_MODEL) as reply:
            if reply.status_code != 200:
                raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
            for raw in reply.iter_lines():
                if raw.strip():
                    arrivals.append(time.perf_counter() - started)
                    lines.append(json.loads(raw))
        return {"arrivals": arrivals, "lines": lines, "total_s": time.perf_counter() - started}

    progress("  the streamed timeline (one JSON line per window) ...")
    run, peak = _peak_mb(pid, streamed)
    final = run["lines"][-1]
    if "timeline" not in final:
        raise RuntimeError(f"the streamed timeline ended without its full answer: {str(final)[:300]}")
    windows = len(final["timeline"])
    timings = final["timings_ms"]
    decoded = int(final["video"]["frames_decoded"])
    sampled = windows * num_frames
    out = {
        "clip": video["name"],  # JSON keys keep their names: "clip" is the video here
        "seconds": video.get("seconds"),
        "video_frames": video.get("frames"),
        "windows": windows,
        "total_s": round(run["total_s"], 2),
        "first_line_s": round(run["arrivals"][0], 2),
        "lines": len(run["lines"]),
        "frames_decoded": decoded,
        "frames_sampled": sampled,
        "decoded_per_sampled": ratio(decoded, sampled),
        "decode_ms": timings["decode"],
        "preprocess_ms": timings["preprocess"],
        "inference_ms": timings["inference"],
        "decode_preprocess_over_forwards": ratio(timings["decode"] + timings["preprocess"], timings["inference"]),
        "single_clip_peak_rss_mb": single_peak,
        "timeline_peak_rss_mb": peak,
        "peak_rss_ratio": ratio(peak, single_peak) if peak and single_peak else None,
        "single_clip_e2e_ms": round(single["e2e_ms"], 1),
    }
    progress(f"  {windows} windows in {out['total_s']:.0f} s (first line after {out['first_line_s']:.1f} s), "
             f"{decoded} frames decoded for {sampled} sampled, peak RSS {peak} MB (single request {single_peak} MB)")
    return out


def embedding_cost(served: Any, video: Dict[str, Any], reps: int, warmup: int) -> Dict[str, Any]:
    """Labels and embedding requests of one video, interleaved, ``reps`` each after ``warmup``."""
    body = video["path"].read_bytes()
    progress(f"embedding cost: {video['name']} ({warmup} warm-up + {reps} requests each, labels / embedding interleaved)")
    times: Dict[str, List[float]] = {"labels": [], "embedding": []}
    for rep in range(warmup + reps):
        for output in times:
            elapsed = served.predict(body, {"output": output})["e2e_ms"]
            if rep >= warmup:
                times[output].append(elapsed)
    out: Dict[str, Any] = {"clip": video["name"]}
    for output, values in times.items():
        out[output] = {**summary(values), "p50": round(percentile(values, 50), 3)}
    out["embedding_over_labels"] = ratio(out["embedding"]["p50"], out["labels"]["p50"])
    progress(f"  labels p50 {out['labels']['p50']:.0f} ms, embedding p50 {out['embedding']['p50']:.0f} ms "
             f"-> {out['embedding_over_labels']:.3f}x")
    return out


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    http = results.get("http", {})
    out: List[Dict[str, Any]] = []
    tl = http.get("timeline")
    if tl:
        name = f"{tl['seconds']:g} s 720p" if tl.get("seconds") else tl["clip"]
        out.append(target(
            f"timeline decode+preprocess / summed forwards [{name}, {tl['windows']} windows]",
            tl["decode_preprocess_over_forwards"], "<=", 0.25,
            f"{tl['decode_ms'] + tl['preprocess_ms']:.0f} ms / {tl['inference_ms']:.0f} ms",
            f"decoding is one forward pass through all {tl['frames_decoded']} frames the windows span "
            f"({tl['decoded_per_sampled']:.2f} decoded per frame sampled: a window samples {tl['frames_sampled'] // max(1, tl['windows'])} "
            f"of the frames it spans, and inter frames must be decoded to reach them)",
        ))
        if tl.get("peak_rss_ratio") is not None:
            out.append(target(
                f"timeline worker peak RSS / single request [{name}]", tl["peak_rss_ratio"], "<=", 1.2,
                f"{tl['timeline_peak_rss_mb']:.0f} MB / {tl['single_clip_peak_rss_mb']:.0f} MB",
                "the windows in flight and the micro-batch, not the video's length, should set the peak",
            ))
        if tl.get("video_frames"):
            out.append(target(
                f"timeline single pass: frames decoded / frames in the video [{name}]",
                ratio(tl["frames_decoded"], tl["video_frames"]), "<=", 1.0,
                f"{tl['frames_decoded']} / {tl['video_frames']}", "a window was decoded more than once",
            ))
    emb = http.get("embedding")
    if emb:
        out.append(target(
            f"embedding request / labels request p50 [{emb['clip']}]", emb["embedding_over_labels"], "<=", 1.05,
            f"{emb['embedding']['p50']:.0f} ms / {emb['labels']['p50']:.0f} ms",
            "both are one forward of the same exported method; a miss is noise or the 2,304-float answer's size",
        ))
    return out


def render(results: Dict[str, Any]) -> List[str]:
    http = results.get("http", {})
    lines: List[str] = []
    tl = http.get("timeline")
    if tl:
        lines += ["", f"6. Streamed timeline of {tl['clip']} at the default stride"]
        lines.append(
            f"  {tl['windows']} windows, {tl['lines']} lines in {tl['total_s']:.1f} s (first after {tl['first_line_s']:.1f} s); "
            f"decode {fmt_ms(tl['decode_ms'])} + preprocess {fmt_ms(tl['preprocess_ms'])} vs forwards "
            f"{fmt_ms(tl['inference_ms'])} ms; {tl['frames_decoded']} frames decoded for {tl['frames_sampled']} sampled "
            f"({tl['decoded_per_sampled']:.2f}); worker peak RSS {tl['timeline_peak_rss_mb']} MB vs single request "
            f"{tl['single_clip_peak_rss_mb']} MB"
        )
    emb = http.get("embedding")
    if emb:
        lines += ["", f"7. Embedding vs labels, same video ({emb['clip']}), interleaved"]
        lines.append(f"  labels p50 {fmt_ms(emb['labels']['p50'])} ms, embedding p50 {fmt_ms(emb['embedding']['p50'])} ms "
                     f"-> {emb['embedding_over_labels']:.3f}x")
    return lines
