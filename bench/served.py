"""Sections 3-5 through a real TorchServe (isolated, on free loopback ports, stopped at the end):
HTTP end-to-end latency of one client, throughput of N concurrent clients, and cost growth
(time and the worker's peak RSS) with the length of the uploaded video.

The model-only floor is measured in this process between HTTP requests (the server idles
meanwhile), so each ratio compares figures taken side by side.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

from harness.inproc import InProcessHandler
from harness.paths import TIMELINE_MODEL  # config.properties: the same .mar again, for long timelines
from harness.memory import RssSampler, peak_rss_mb, reset_peak, rss_mb
from bench.util import percentile, progress, ratio, shortest_and_longest, summary




class Served:
    """A started LocalTorchServe (registered as config.properties does: the main registration and
    the one for long timelines, a worker each) plus one keep-alive HTTP session per client thread.
    ``model``: which registration a request goes to (default: the main one)."""

    def __init__(self, mar: Optional[Path] = None, server: Any = None) -> None:
        """Start a server for ``mar`` (on entering), or use ``server``, a started LocalTorchServe
        that the caller owns (it is neither started nor stopped here)."""
        from harness.torchserve import LocalTorchServe

        self._tmp = None if server is not None else tempfile.TemporaryDirectory(prefix="slowfast-bench-")
        self.server = server if server is not None else LocalTorchServe(mar, Path(self._tmp.name), also_as=(TIMELINE_MODEL,))
        self._local = threading.local()
        self.start_s = float("nan")

    def __enter__(self) -> "Served":
        if self._tmp is None:
            return self
        started = time.perf_counter()
        progress("starting an isolated TorchServe (free loopback ports) ...")
        try:
            self.server.start()
        except BaseException:
            self._tmp.cleanup()
            raise
        self.start_s = time.perf_counter() - started
        progress(f"  ready in {self.start_s:.1f} s; worker pid {self.worker_pid()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is None:
            return
        progress("stopping the benchmark's TorchServe")
        self.server.stop()
        self._tmp.cleanup()

    def runtime_log(self) -> List[str]:
        """The worker's lines about its CPU runtime: the choice and why, conversion or cache, fallback."""
        path = self.server.log_dir / "model_log.log"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return [line.split(" - ", 1)[-1] for line in lines if "CPU runtime" in line or "cpu_runtime" in line]

    def worker_pid(self, model: Optional[str] = None) -> Optional[int]:
        workers = [w for w in self.server.workers(model) if w.get("status") == "READY"]
        return int(workers[0]["pid"]) if workers and workers[0].get("pid") else None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def post(self, video: bytes, headers: Optional[Dict[str, str]] = None, stream: bool = False,
             model: Optional[str] = None) -> requests.Response:
        """One raw-body request with the inference token and request-option ``headers``."""
        merged = {"Content-Type": "application/octet-stream", **self.server.keys.inference_header(), **(headers or {})}
        url = self.server.predictions_url_of(model) if model else self.server.predictions_url
        return self._session().post(url, data=video, headers=merged, stream=stream, timeout=3600)

    def predict(self, video: bytes, headers: Optional[Dict[str, str]] = None, model: Optional[str] = None) -> Dict[str, Any]:
        """One request; returns the body plus ``e2e_ms`` (client-side wall time, upload included)."""
        started = time.perf_counter()
        reply = self.post(video, headers, model=model)
        e2e_ms = (time.perf_counter() - started) * 1000
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
        body = reply.json()
        body["e2e_ms"] = e2e_ms
        return body


def _handler_medians(bodies: List[Dict[str, Any]]) -> Dict[str, Any]:
    keys = ("decode", "preprocess", "inference", "handler_total")
    out = {k: summary([float(b["timings_ms"][k]) for b in bodies]) for k in keys}
    out["outside_handler"] = summary([b["e2e_ms"] - float(b["timings_ms"]["handler_total"]) for b in bodies])
    return out


def latency(served: Served, handler: InProcessHandler, videos: List[Dict[str, Any]], reps: int,
            warmup: int) -> Dict[str, Any]:
    """One client, sequential requests, each followed by one in-process model-only forward and the
    same request in-process: the worker's preprocess is judged beside the in-process one taken
    in the same minutes, after the same videos (section 1's, minutes earlier and after other work,
    read 2x the worker's on 2026-12-06 where this interleaving reads 1.0x)."""
    floor_input = handler.dummy_pathways(1)
    out: Dict[str, Any] = {}
    for video in videos:
        progress(f"http latency: {video['name']} ({warmup} warm-up + {reps} requests, one client)")
        data = video["path"].read_bytes()
        bodies, floors, in_process = [], [], []
        for rep in range(warmup + reps):
            body = served.predict(data)
            floor = handler.forward_ms(floor_input)
            alone = float(handler.handle(data)["timings_ms"]["preprocess"])
            if rep >= warmup:
                bodies.append(body)
                floors.append(floor)
                in_process.append(alone)
        e2e = [b["e2e_ms"] for b in bodies]
        result = {
            "e2e_ms": {**summary(e2e), "p50": round(percentile(e2e, 50), 3), "p95": round(percentile(e2e, 95), 3)},
            "model_forward_ms": summary(floors),
            "handler_ms": _handler_medians(bodies),
            "in_process_preprocess_ms": summary(in_process),
            "kinetics_size": video.get("kinetics_size", False),
            "kind": video.get("kind"),
        }
        result["p50_over_forward"] = ratio(result["e2e_ms"]["p50"], result["model_forward_ms"]["median"])
        result["p95_over_forward"] = ratio(result["e2e_ms"]["p95"], result["model_forward_ms"]["median"])
        out[video["name"]] = result
        progress(f"  e2e p50 {result['e2e_ms']['p50']:.0f} ms p95 {result['e2e_ms']['p95']:.0f} ms, "
                 f"forward {result['model_forward_ms']['median']:.0f} ms -> {result['p50_over_forward']:.2f}x")
    return out


def throughput(served: Served, video: Dict[str, Any], clients: int, per_client: int, warmup: int = 1,
               model: Optional[str] = None) -> Dict[str, Any]:
    """``clients`` threads each sending ``per_client`` requests back to back, after ``warmup``
    rounds; to the registration ``model`` (default: the main one)."""
    data = video["path"].read_bytes()
    progress(f"throughput: {clients} concurrent clients x {per_client} requests of {video['name']}")

    def one_client(count: int) -> List[Dict[str, Any]]:
        return [served.predict(data, model=model) for _ in range(count)]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        if warmup:
            list(pool.map(one_client, [warmup] * clients))  # warm-up: sessions, batching path
        started = time.perf_counter()
        results = list(pool.map(one_client, [per_client] * clients))
        wall = time.perf_counter() - started
    bodies = [b for r in results for b in r]
    batch_sizes = [int(b["timings_ms"].get("batch_size", 1)) for b in bodies]
    out = {
        "clip": video["name"],  # JSON keys keep their names: "clip" is the video here
        "clients": clients,
        "requests": len(bodies),
        "wall_s": round(wall, 3),
        "clips_per_s": round(len(bodies) / wall, 4),
        "e2e_ms": {**summary([b["e2e_ms"] for b in bodies]),
                   "p50": round(percentile([b["e2e_ms"] for b in bodies], 50), 3),
                   "p95": round(percentile([b["e2e_ms"] for b in bodies], 95), 3)},
        "handler_ms": _handler_medians(bodies),
        "mean_batch_size": round(sum(batch_sizes) / len(batch_sizes), 3),
    }
    progress(f"  {out['clips_per_s']:.3f} videos/s (mean TorchServe batch {out['mean_batch_size']})")
    return out


def growth(served: Served, videos: List[Dict[str, Any]], reps: int, warmup: int = 1) -> Dict[str, Any]:
    """One default request on each video (shortest first), its time and the worker's peak RSS.

    The worker's peak-RSS mark (VmHWM) is reset before each video's first request; where the kernel
    refuses, a 5 ms RSS sampler gives the peak instead. Shortest first, so memory a longer video
    leaves behind can only count against the longer ones.
    """
    pid = served.worker_pid()
    out: Dict[str, Any] = {"worker_pid": pid, "videos": {}}
    for video in videos:
        data = video["path"].read_bytes()
        progress(f"growth: {video['name']} ({len(data) / 2**20:.1f} MB, {warmup} warm-up + {reps} requests)")
        before = rss_mb(pid) if pid else None
        hwm_reset = bool(pid) and reset_peak(pid)
        # A sampler only where the kernel's peak mark cannot be reset (it costs a little CPU).
        sampler = RssSampler(pid) if (pid and not hwm_reset) else None
        bodies = []
        if sampler:
            sampler.__enter__()
        try:
            for _ in range(warmup):  # untimed, but inside the peak: its memory is this video's too
                served.predict(data)
            for _ in range(reps):
                bodies.append(served.predict(data))
        finally:
            if sampler:
                sampler.__exit__()
        peak_hwm = peak_rss_mb(pid) if (pid and hwm_reset) else None
        peaks = [p for p in (peak_hwm, sampler.peak if sampler else None) if p]
        e2e = [b["e2e_ms"] for b in bodies]
        result = {
            "seconds": video.get("seconds"),
            "bytes": len(data),
            "e2e_ms": summary(e2e),
            "handler_ms": _handler_medians(bodies),
            "frames_decoded": bodies[-1]["video"]["frames_decoded"],
            "window_s": bodies[-1]["windows"][0],
            "worker_rss_before_mb": round(before, 1) if before else None,
            "worker_peak_rss_mb": round(max(peaks), 1) if peaks else None,
            "peak_source": "VmHWM (reset per video)" if peak_hwm else "5 ms RSS sampler",
        }
        out["videos"][video["name"]] = result
        progress(f"  e2e {result['e2e_ms']['median']:.0f} ms, decode {result['handler_ms']['decode']['median']:.0f} ms, "
                 f"{result['frames_decoded']} frames decoded, worker peak RSS {result['worker_peak_rss_mb']} MB")
    ends = shortest_and_longest(out)
    if ends:
        first, last = ends
        out["time_ratio"] = ratio(last["e2e_ms"]["median"], first["e2e_ms"]["median"])
        if first["worker_peak_rss_mb"] and last["worker_peak_rss_mb"]:
            out["peak_rss_ratio"] = ratio(last["worker_peak_rss_mb"], first["worker_peak_rss_mb"])
    return out
